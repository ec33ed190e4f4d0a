"""Answers remembered for decision requests that recur exactly.

A proxy asks about the same request over and over: every asset of a page,
every poll of an API, from the same client with the same cookie. Parsing the
forwarded headers and the decision are pure functions of their inputs, so
when the inputs are the same, the work need not be done again:

- `request()`: the forwarded header values (and the peer) -> the parsed,
  normalised OriginalRequest. Nothing but the inputs and the trusted proxies
  (fixed for one Runtime) goes into it.
- `answer()`: (those header values, the session object) -> the allowed
  result (its outcome and headers; the status is 200). The decision also
  depends on the clock (a rule's max_age lapses; an identity assertion is
  re-signed), which is why each answer carries `until`, and on the state
  store's health (past `tokens.stale_grace` answers turn into 503s), which
  is why the pipeline (authorize.py) consults this memo only while the store
  answers, and only for a plain credential outcome (a valid one, or none at
  all): a refused token, say, may get another answer than the anonymous one
  remembered for the same URL.

What is never remembered is the credential check: opening the cookie (expiry,
idle timeout, refresh), the revocation check and a bearer token's caveats run
on every request, and the session object they return is part of the key. A
revoked, expired or different credential therefore never reaches a remembered
answer; and only allowed answers without `Set-Cookie` are remembered, since
every denial is logged and audited as it happens.

One memo belongs to one Authorizer, built for one Runtime: a reload (new policy, keys, trusted proxies)
starts an empty one. Both tables are bounded and are simply emptied when full:
keys are made from client-supplied headers, so they must not grow without
limit, and an empty table costs one slow request per key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from forwardauth.core.request import OriginalRequest
from forwardauth.core.session import Session

MAX_ENTRIES = 8192
Key = tuple[object, ...]
R = TypeVar("R")


class Memo(Generic[R]):
    """Parsed requests and remembered answers (of type R: the pipeline's result)."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._requests: dict[Key, OriginalRequest] = {}
        self._answers: dict[tuple[Key, int], tuple[Session | None, R, float]] = {}

    def request(self, key: Key, parse: Callable[..., OriginalRequest], *args: object) -> OriginalRequest:
        """The parsed request for these header values: `parse(*args)`, which
        raises BadRequest for malformed ones (those are not remembered)."""
        req = self._requests.get(key)
        if req is None:
            req = parse(*args)
            if len(self._requests) >= self.max_entries:
                self._requests.clear()
            self._requests[key] = req
        return req

    def answer(self, key: Key, session: Session | None, now: float) -> R | None:
        """The answer remembered for this request and this very session object, still valid at `now`."""
        # id() is a safe key: the entry holds the session, so no other object
        # can get its id while the entry exists.
        hit = self._answers.get((key, id(session)))
        if hit is None or now >= hit[2]:
            return None
        return hit[1]

    def remember(self, key: Key, session: Session | None, answer: R, until: float) -> None:
        if len(self._answers) >= self.max_entries:
            self._answers.clear()
        self._answers[(key, id(session))] = (session, answer, until)
