"""The pipeline of one decision, from the proxy's request to its answer.

    peer check -> parse (memo) -> credential -> memo -> decide -> answer -> result

- **peer check**: only `server.trusted_proxies` may ask (403 otherwise);
- **parse**: the proxy's forwarded headers into an `OriginalRequest`
  (request.py, paths.py), remembered per distinct set of values (memo.py);
  a malformed or ambiguous request is refused with 400;
- **credential**: the parts' credential sources in order (the tokens part's
  bearer tokens), then the session cookie; the outcome is a typed
  `Credential` (credentials.py);
- **memo**: a plain credential outcome on a request asked about before gets
  the answer it got then (memo.py says when that is right);
- **decide**: every reading of the request against the policy (decision.py);
- **answer**: written by responses.py, the state store's health applied by
  `StorePolicy` (the one place that says what an outage refuses), then what
  the parts add to an allow (the tokens part's identity assertion).

`Authorizer` is pure: no aiohttp, no I/O, no clock of its own. The aiohttp
handler of /auth/* (web/decision_endpoints.py) is a thin adapter around
`Authorizer.authorize`, and `forwardauth explain` calls `Authorizer.judge`,
the very same code from the credential on, so it answers what the server
would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple, Protocol

from forwardauth.core import responses
from forwardauth.core.config import Config
from forwardauth.core.cookies import cookie_value, set_cookie
from forwardauth.core.credentials import Credential, CredentialSource, RevocationView, Source, Status, session_cookie
from forwardauth.core.decision import Decision, Outcome, decide
from forwardauth.core.durations import format_duration
from forwardauth.core.logs import Throttle
from forwardauth.core.memo import Key, Memo
from forwardauth.core.request import AmbiguousPath, BadRequest, Convention, OriginalRequest, parse_ip
from forwardauth.core.responses import Answer
from forwardauth.core.runtime import Runtime
from forwardauth.core.session import Session

log = logging.getLogger("forwardauth")


class Refusal(str, Enum):
    """Requests answered before any decision (counted next to the decisions' outcomes)."""

    UNTRUSTED_PEER = "untrusted_peer"
    BAD_REQUEST = "bad_request"
    AMBIGUOUS_PATH = "ambiguous_path"


Tally = Outcome | Refusal  # what one answer counts as (forwardauth_decisions_total{outcome})


# --- the state store's health -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """The state store as the decisions see it at one moment.

    The decision endpoints never read the store: they read in-memory copies
    (the revocation snapshot, the tokens part's index) that background loops
    refresh. This says how fresh those copies are."""

    read: bool = True  # the revocation snapshot was read at least once
    answering: bool = True  # the revocation store answered its last refresh
    down_for: float = 0.0  # seconds since the revocation store last answered (0 while it answers)
    stale_for: float = 0.0  # the longest any in-memory copy (revocations, token index) went without a refresh
    since_ok: float = 0.0  # seconds since the revocation snapshot was last refreshed (only for /readyz)
    error: str | None = None  # what the revocation snapshot's last failed refresh said (safe to show)
    stale_error: str | None = None  # that, or what another copy's last failed refresh said


HEALTHY = Health()


class Refreshed(Protocol):
    """An in-memory copy of the state store kept fresh by a background loop
    (the revocation snapshot, the token index)."""

    last_ok: float | None  # time.monotonic() of the last good refresh
    last_error: str | None  # None while refreshes succeed

    def unreachable_for(self) -> float: ...


def health_of(revocations: Refreshed, others: Sequence[Refreshed], monotonic: float, full: bool = False) -> Health:
    """The health of the store from the copies' refresh records: HEALTHY (no
    allocation: this runs on every decision) while every copy was loaded and
    its last refresh succeeded, unless `full` (/readyz) asks for `since_ok`."""
    if not full and revocations.last_error is None and revocations.last_ok is not None and all(
            o.last_error is None and o.last_ok is not None for o in others):
        return HEALTHY
    down = revocations.unreachable_for()
    stale = max([down, *(o.unreachable_for() for o in others)])
    error = revocations.last_error
    stale_error = error or next((o.last_error for o in others if o.last_error), None)
    since = math.inf if revocations.last_ok is None else monotonic - revocations.last_ok
    return Health(revocations.last_ok is not None, error is None, down, stale, since, error, stale_error)


@dataclass(frozen=True)
class StorePolicy:
    """What an outage of the state store refuses. The one place that says it.

    - Before the revocation snapshot was ever read, signed-in requests are
      refused (503): a revoked session could not be told apart. Anonymous
      routes still answer.
    - For `grace` seconds of an outage (tokens.stale_grace), decisions answer
      from the in-memory copies as usual; past it, bearer tokens are refused
      (503), and so are sessions on routes that need a level, except cookie
      sessions on routes up to `sessions_up_to` (tokens.stale_sessions_up_to).
    - Answers come from the decision memo only while the store answers.
    - /readyz: ready once the snapshot was read and for as long as decisions
      are answered as usual; past the grace it says what is refused; a
      snapshot not refreshed for the longest of three refresh intervals, five
      seconds and the grace (a refresh loop that hangs) is the backstop.
    """

    grace: float = 30.0
    sessions_up_to: str | None = None
    refresh_interval: float = 2.0

    def memo_usable(self, health: Health) -> bool:
        return health.answering and health.read

    def checkable(self, health: Health) -> bool:
        """May a credential that needs fresh state (a bearer token) be checked?"""
        return health.stale_for <= self.grace

    def refuse(self, cfg: Config, decision: Decision, credential: Credential, health: Health) -> Answer | None:
        """The 503 that replaces the decision's answer, if the store's health calls for one."""
        if credential.status is Status.UNCHECKABLE:
            return responses.unavailable(health.stale_for, self.grace, "bearer tokens are")
        if decision.outcome is Outcome.ALLOW and not health.read:
            return responses.NOT_READ_YET
        required = decision.required_level
        if decision.allowed and decision.session is not None and required is not None:
            token = credential.source is Source.TOKEN
            if health.down_for > self.grace or (token and health.stale_for > self.grace):
                up_to = self.sessions_up_to
                if token or up_to is None or not cfg.levels.at_least(up_to, required):
                    return responses.unavailable(health.stale_for, self.grace,
                                                 f"sessions on routes needing level {required} are")
        return None

    def not_ready(self, health: Health) -> str | None:
        """Why this process is not ready (/readyz), or None. `health` with `since_ok` (health_of(full=True))."""
        if not health.read:
            return "state store not read yet"
        down = health.stale_for
        if self.grace < down < math.inf:
            return (f"state store unreachable for {format_duration(int(down))} ({health.stale_error}); "
                    f"past tokens.stale_grace ({format_duration(self.grace)}) bearer tokens and "
                    "revocation-sensitive routes are refused")
        if health.since_ok > max(3 * self.refresh_interval, 5.0, self.grace):
            return f"state store unreachable ({health.error})"
        return None


# --- what parts add -----------------------------------------------------------------


class AllowHeaders(Protocol):
    """Headers a part adds to an allowed answer (the tokens part's identity
    assertion), and until when they hold (the answer is remembered no longer).
    None adds nothing. No I/O."""

    def __call__(self, session: Session, req: OriginalRequest, now: float) -> tuple[
            tuple[tuple[str, str], ...], float] | None: ...


class DecisionHooks(NamedTuple):
    """What one part adds to the decisions of one runtime."""

    credential: CredentialSource | None = None
    allow_headers: AllowHeaders | None = None


# --- the pipeline -------------------------------------------------------------------


class Result:
    """One answer of the pipeline, with what it was made from (for counters,
    logs and the audit of denials). Allowed answers are remembered as they
    are; `wire` is the adapter's own cache of their headers (e.g. aiohttp's
    header object), so a remembered answer is converted once."""

    __slots__ = ("answer", "tally", "decision", "request", "credential", "denied", "wire")

    def __init__(self, answer: Answer, tally: Tally, decision: Decision | None = None,
                 request: OriginalRequest | None = None, credential: Credential | None = None):
        self.answer = answer
        self.tally = tally
        self.decision = decision
        self.request = request
        self.credential = credential
        self.denied = decision is not None and not decision.allowed  # a decision that said no (logged)
        self.wire: object | None = None


_REFUSALS = Throttle(per_interval=10, interval=1.0, name="refused_requests")
# Denied decisions: limits.denial_log_lines a second (set from the config at each call).
_DENIALS = Throttle(per_interval=10, interval=1.0, name="denials")


class Authorizer:
    """The decision pipeline for one runtime and one kind of proxy.

    Built again when the runtime changes (a reload), with an empty memo."""

    def __init__(self, runtime: Runtime, convention: Convention, *, redirects: bool, revocations: RevocationView,
                 hooks: Sequence[DecisionHooks] = (), policy: StorePolicy = StorePolicy(), endpoint: str = ""):
        self.runtime = runtime
        self.config = runtime.config
        self.convention = convention
        self.redirects = redirects
        self.via_nginx = not redirects
        self.revocations = revocations
        self.sources = tuple(h.credential for h in hooks if h.credential is not None)
        self.allow_headers = tuple(h.allow_headers for h in hooks if h.allow_headers is not None)
        self.policy = policy
        self.endpoint = endpoint
        self.memo: Memo[Result] = Memo()
        self.cookie_name = runtime.config.session.cookie_name

    def authorize(self, remote: str | None, headers: Mapping[str, str], now: float, health: Health) -> Result:
        """The answer to a proxy's question: `remote` is the peer's address as
        the server saw it, `headers` the request's headers. The hot path: kept
        to as few calls as the steps allow (HEALTHY is checked by identity)."""
        trusted = self.runtime.trusted
        peer = trusted.peer(remote)
        if peer is None:
            try:
                shown: str | None = str(parse_ip(remote or ""))
            except ValueError:
                shown = None
            return Result(responses.untrusted_peer(shown), Refusal.UNTRUSTED_PEER)
        convention = self.convention
        values = convention.values(headers)
        key = (remote, values)
        try:
            req = self.memo.request(key, convention.parse, values, peer, trusted)
        except BadRequest as exc:
            ambiguous = isinstance(exc, AmbiguousPath)
            self._log_refusal(values, exc, ambiguous)
            return Result(responses.bad_request(str(exc), self.via_nginx),
                          Refusal.AMBIGUOUS_PATH if ambiguous else Refusal.BAD_REQUEST)
        cred = None
        if self.sources:
            checkable = health is HEALTHY or self.policy.checkable(health)
            for source in self.sources:
                cred = source(headers, req, now, checkable)
                if cred is not None:
                    break
        if cred is None:
            value = cookie_value(headers.get("Cookie"), self.cookie_name)
            cred = session_cookie(self.runtime.codec, value, self.revocations, now)
        status = cred.status
        if ((status is Status.VALID or status is Status.ABSENT) and not cred.refresh
                and (health is HEALTHY or self.policy.memo_usable(health))):
            hit = self.memo.answer(key, cred.session, now)
            return hit if hit is not None else self._decide(req, cred, now, health, key)
        return self._decide(req, cred, now, health, None)

    def credential(self, headers: Mapping[str, str], req: OriginalRequest, now: float, health: Health) -> Credential:
        """The parts' credential sources in order, the first that finds one of
        its kind wins; else the session cookie (as `authorize` does it)."""
        checkable = self.policy.checkable(health)
        for source in self.sources:
            found = source(headers, req, now, checkable)
            if found is not None:
                return found
        value = cookie_value(headers.get("Cookie"), self.cookie_name)
        return session_cookie(self.runtime.codec, value, self.revocations, now)

    def judge(self, req: OriginalRequest, headers: Mapping[str, str], now: float, health: Health,
              credential: Credential | None = None) -> Result:
        """Everything after the parse, without the memo: what `forwardauth
        explain` runs. `credential` given (explain's --user) skips the credential step."""
        cred = credential if credential is not None else self.credential(headers, req, now, health)
        return self._decide(req, cred, now, health, None)

    def _decide(self, req: OriginalRequest, cred: Credential, now: float, health: Health,
                key: Key | None) -> Result:
        """Decide and answer; an allowed 200 is remembered under `key` (given
        only when the memo may be used: see `authorize`)."""
        session = cred.session
        cfg = self.config
        decision = decide(req, session, cfg.policy, cfg.levels, now)
        ans = self.policy.refuse(cfg, decision, cred, health)
        if ans is not None and self.via_nginx:
            ans = responses.unavailable_via_nginx(ans)
        if ans is None:
            ans = responses.answer(cfg, decision, req, self.redirects, cred)
            if decision.outcome is Outcome.ALLOW and self.allow_headers:
                ans = self._allow_headers(ans, session, req, now)  # type: ignore[arg-type]
        if session is not None and cred.refresh:
            ans = replace(ans, headers=ans.headers + (("Set-Cookie", self._refreshed(session, now)),))
        result = Result(ans, decision.outcome, decision, req, cred)
        if key is not None and decision.allowed and ans.status == 200:
            self.memo.remember(key, session, result, ans.until)
        return result

    def _allow_headers(self, ans: Answer, session: Session, req: OriginalRequest, now: float) -> Answer:
        for extra in self.allow_headers:
            found = extra(session, req, now)
            if found is not None:
                more, until = found
                ans = replace(ans, headers=ans.headers + more, until=min(ans.until, until))
        return ans

    def _refreshed(self, session: Session, now: float) -> str:
        """Set-Cookie for the session re-sealed as seen now (the idle timeout starts again)."""
        rt = self.runtime
        value = rt.codec.seal(rt.codec.touched(session, now))
        return set_cookie(rt.config.session, self.cookie_name, value, int(session.exp - now))

    def _log_refusal(self, values: tuple[str | None, ...], exc: Exception, ambiguous: bool) -> None:
        """One line per refused request, at most ten a second (logs.Throttle). For
        an ambiguous path, the path as sent (its query left out, cut to 200
        characters), so an operator can see what was refused."""
        skipped = _REFUSALS.allow()
        if skipped is None:
            return
        fields: dict[str, object] = {"endpoint": self.endpoint, "reason": str(exc)}
        if ambiguous:
            target = dict(zip(self.convention.fields, values, strict=True))
            uri = target.get("X-Original-URL") or target.get("X-Original-URI") or target.get("X-Forwarded-Uri") or ""
            fields["path"] = uri.split("?", 1)[0][:200].encode("ascii", "backslashreplace").decode()
        if skipped:
            fields["suppressed"] = skipped
        log.warning("request refused" if not ambiguous else "ambiguous path refused", extra={"fields": fields})


def log_denial(result: Result, per_second: int = 10) -> None:
    """One log line for a decision that said no (the common anonymous
    "please sign in" is left out), at most `per_second` a second
    (limits.denial_log_lines): a flood of denials is a counter, not a flood
    on the disk. The next line written says how many were left out."""
    decision, req, cred = result.decision, result.request, result.credential
    if decision is None or req is None or cred is None:
        return
    if decision.outcome is Outcome.UNAUTHENTICATED and cred.reason == "absent":
        return
    _DENIALS.per_interval = per_second
    skipped = _DENIALS.allow()
    if skipped is None:
        return
    fields: dict[str, object] = {
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "cookie": cred.label,
        "user": decision.session.sub if decision.session else None,
        "host": req.host,
        "path": req.path,
        "method": req.method,
        "client": str(req.client) if req.client else None,
    }
    if skipped:
        fields["suppressed"] = skipped
    log.info("decision", extra={"fields": fields})
