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
- `rules`: (rule, method, session object) -> that rule's decision (see
  decision.decide), and `results`: decision object -> the pipeline's allowed
  result, for requests never asked before that land on a rule and session
  already decided (a user loading many pages under one rule): they are
  parsed and matched against the policy, not decided and answered again.

What is never remembered is the credential check: opening the cookie (expiry,
idle timeout, refresh), the revocation check and a bearer token's caveats run
on every request, and the session object they return is part of the key. A
revoked, expired or different credential therefore never reaches a remembered
answer; and only allowed answers without `Set-Cookie` are remembered, since
every denial is logged and audited as it happens.

One memo belongs to one Authorizer, built for one Runtime: a reload (new
policy, keys, trusted proxies) starts an empty one. Every table is bounded
(`server.memo_entries`) and least-recently-used entries go first: keys are
made from client-supplied headers, so they must not grow without limit, and
a working set larger than the memo loses only its coldest entries, not all
of them at once. `counts` are the answers table's hits and misses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from forwardauth.core.lru import Lru
from forwardauth.core.request import OriginalRequest
from forwardauth.core.session import Session

DEFAULT_ENTRIES = 20_000
Key = tuple[object, ...]
R = TypeVar("R")


class Memo(Generic[R]):
    """Parsed requests and remembered answers (of type R: the pipeline's result)."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, counts: list[int] | None = None):
        self.max_entries = max_entries
        self._requests: Lru = Lru(max_entries)
        self._answers: Lru = Lru(max_entries)
        self.rules: Lru = Lru(max_entries)  # (id(rule), method, id(session)) -> (rule, session, decision)
        self.results: Lru = Lru(max_entries)  # id(decision) -> (decision, result)
        # [hits, misses] of answer(): a list shared with the metrics (counted without a call or a lock)
        self.counts = counts if counts is not None else [0, 0]

    def tables(self) -> tuple[Lru, ...]:
        """Every table (web/retire.py empties a replaced memo's off the event loop)."""
        return (self._requests, self._answers, self.rules, self.results)

    def request(self, key: Key, parse: Callable[..., OriginalRequest], *args: object) -> OriginalRequest:
        """The parsed request for these header values: `parse(*args)`, which
        raises BadRequest for malformed ones (those are not remembered)."""
        req = self._requests.get(key)
        if req is None:
            req = parse(*args)
            self._requests.put(key, req)
        else:
            self._requests.move_to_end(key)
        return req

    def answer(self, key: Key, session: Session | None, now: float) -> R | None:
        """The answer remembered for this request and this very session object, still valid at `now`."""
        # id() is a safe key: the entry holds the session, so no other object
        # can get its id while the entry exists.
        k = (key, id(session))
        hit = self._answers.get(k)
        if hit is None or now >= hit[2]:
            self.counts[1] += 1
            return None
        self._answers.move_to_end(k)
        self.counts[0] += 1
        return hit[1]

    def remember(self, key: Key, session: Session | None, answer: R, until: float) -> None:
        self._answers.put((key, id(session)), (session, answer, until))
