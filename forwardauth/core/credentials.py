"""What a request carries to say who it is, and the typed outcome of checking it.

Two kinds of credential reach the decision endpoints: the session cookie,
sealed and opened here by `SessionCodec`, and bearer tokens, checked by the
tokens part through a `CredentialSource` (see `authorize`). Whatever the
kind, the check comes out as one `Credential`:

- `Status.ABSENT`: the request carries no credential at all;
- `Status.VALID`: a valid session or token (`session` is set);
- `Status.REFUSED`: a credential that does not hold (`reason` names the
  check: expired, idle, tampered, revoked, bad signature, ...);
- `Status.UNCHECKABLE`: a credential that cannot be checked right now (a
  token while the state store has been unreachable past the grace).

Only ABSENT and VALID are "plain": the answer then depends on the request
alone and may come from the decision memo (memo.py). A `Credential` is a
NamedTuple, and the refusals are module constants: one is made on every
decision, and a frozen dataclass costs several times as much to make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from enum import Enum
from typing import NamedTuple, Protocol

from forwardauth.core.levels import Levels
from forwardauth.core.lru import Lru
from forwardauth.core.request import OriginalRequest
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.core.session import Session, new_session_id

MAX_OPENED = 20_000  # opened cookies remembered per codec (per runtime)
# Session cookies decrypted and parsed (not found among the opened ones), in
# this process: forwardauth_sessions_opened_total. A list, counted without a call.
OPENED = [0]
MAX_COOKIE_BYTES = 3800  # browsers drop cookies over ~4 KB in total


class Status(Enum):
    ABSENT = "absent"
    VALID = "valid"
    REFUSED = "refused"
    UNCHECKABLE = "uncheckable"


class Source(Enum):
    NONE = "none"  # nothing was presented
    COOKIE = "cookie"  # the session cookie
    TOKEN = "token"  # a bearer token (the tokens part)


class Credential(NamedTuple):
    """The outcome of checking a request's credential."""

    session: Session | None
    reason: str  # "ok", "absent", or the check that refused it (for logs, explain and RFC 6750 challenges)
    refresh: bool = False  # a cookie past half its idle window: re-seal it and send Set-Cookie
    status: Status = Status.REFUSED
    source: Source = Source.COOKIE

    @property
    def plain(self) -> bool:
        """A valid credential or none at all: the answer depends on the request alone."""
        return self.status is Status.VALID or self.status is Status.ABSENT

    @property
    def label(self) -> str:
        """The outcome as logs write it: "ok", "absent", "expired", "token: bad signature", ..."""
        return f"token: {self.reason}" if self.source is Source.TOKEN and not self.plain else self.reason


def valid(session: Session, source: Source = Source.COOKIE, refresh: bool = False) -> Credential:
    return Credential(session, "ok", refresh, Status.VALID, source)


def refused(reason: str, source: Source = Source.COOKIE) -> Credential:
    return Credential(None, reason, False, Status.REFUSED, source)


ABSENT = Credential(None, "absent", False, Status.ABSENT, Source.NONE)
REVOKED = refused("revoked")
_OVERSIZED, _MALFORMED, _UNKNOWN_LEVEL = refused("oversized"), refused("malformed"), refused("unknown level")
_EXPIRED, _IDLE, _FUTURE = refused("expired"), refused("idle"), refused("from the future")


class RevocationView(Protocol):
    """The in-memory revocation snapshot (the state store's, refreshed in the background)."""

    def is_revoked(self, sub: str, ident: str, issued_at: float) -> bool: ...


class CredentialSource(Protocol):
    """A credential other than the session cookie (the tokens part's bearer tokens).

    Returns None when the request carries no credential of its kind; the
    session cookie is then consulted. `checkable` is False while the state
    store has been unreachable past the grace (see authorize.StorePolicy):
    a credential that needs fresh state is then UNCHECKABLE. No I/O."""

    def __call__(self, headers: Mapping[str, str], req: OriginalRequest, now: float,
                 checkable: bool) -> Credential | None: ...


class SessionCodec:
    """Seals sessions into cookie values and opens them, enforcing lifetimes.

    Opening is strict: anything that is not a well-formed, unexpired session
    sealed by a key of the ring is refused, with the reason."""

    def __init__(self, sealer: Sealer, levels: Levels, lifetime: float, idle_timeout: float,
                 max_opened: int = MAX_OPENED):
        self.sealer = sealer
        self.levels = levels
        self.lifetime = lifetime
        self.idle_timeout = idle_timeout
        # Cookie value -> its decrypted, validated Session. A browser sends the
        # same cookie on every request, so the hot path decrypts and parses it
        # once; the time checks below still run on every call. A new key ring
        # (reload) builds a new codec, hence a new, empty cache. Bounded, least
        # recently used out first (memo.Lru): more active cookies than it holds
        # cost a decryption for the coldest ones only.
        self._opened: Lru = Lru(max_opened)

    def new(
        self,
        sub: str,
        level: str,
        now: float,
        *,
        email: str | None = None,
        name: str | None = None,
        groups: tuple[str, ...] = (),
        proofs: Mapping[str, float] | None = None,
        source: str = "local",
    ) -> Session:
        if level not in self.levels:
            raise ValueError(f"unknown level {level!r}")
        return Session(
            sid=new_session_id(),
            sub=sub,
            level=level,
            proofs=dict(proofs) if proofs is not None else {level: now},
            iat=now,
            exp=now + self.lifetime,
            seen=now,
            email=email,
            name=name,
            groups=tuple(groups),
            source=source,
        )

    @property
    def opened(self) -> Lru:
        """The cookies opened (value -> Session), least recently used out: a cache."""
        return self._opened

    def seal(self, session: Session) -> str:
        return self.sealer.seal(session.to_json())

    def open(self, value: str | None, now: float) -> Credential:
        if not value:
            return ABSENT
        if len(value) > MAX_COOKIE_BYTES:
            return _OVERSIZED
        session = self._opened.get(value)
        if session is not None:
            self._opened.move_to_end(value)
        else:
            try:
                raw = self.sealer.open(value)
            except SealError as exc:
                return refused(str(exc))
            try:
                session = Session.from_json(raw)
            except (ValueError, TypeError):
                return _MALFORMED
            if session.level not in self.levels:
                return _UNKNOWN_LEVEL
            OPENED[0] += 1
            self._opened.put(value, session)
        if now >= session.exp:
            return _EXPIRED
        if now - session.seen >= self.idle_timeout:
            return _IDLE
        if session.seen > now + 60 or session.iat > now + 60:
            return _FUTURE
        return Credential(session, "ok", now - session.seen > self.idle_timeout / 2, Status.VALID)

    def touched(self, session: Session, now: float) -> Session:
        return replace(session, seen=now)


def session_cookie(codec: SessionCodec, value: str | None, revocations: RevocationView, now: float) -> Credential:
    """The session cookie's value checked: opened, then the revocation snapshot applied."""
    opened = codec.open(value, now)
    s = opened.session
    if s is not None and revocations.is_revoked(s.sub, s.sid, s.iat):
        return REVOKED
    return opened
