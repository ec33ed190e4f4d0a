"""Bearer tokens on the decision endpoints: token in, typed credential out.

`principal()` is pure (no I/O, `now` passed in): it verifies the macaroon's
HMAC chain under the key ring, reads its caveats, checks them against the
original request, looks the token and account up in the in-memory index and
applies revocation (token id and account epoch). What comes out is a
`Credential` (core.credentials): a valid one holds a `Session` with
`source="token"` and `sid` = token id, which `decide()` then judges like any
session (the policy, not the token, says what a level allows); a refused one
names the check, never the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cachetools import LRUCache

from forwardauth.core.credentials import Credential, RevocationView, Source, refused, valid
from forwardauth.core.keyring import KeyRing
from forwardauth.core.levels import Levels
from forwardauth.core.request import OriginalRequest
from forwardauth.core.session import Session
from forwardauth.state.records import TokenMeta
from forwardauth.tokens import caveats as cv
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens.index import Principal, TokenIndex

_BEARER_RE = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(fa1_[A-Za-z0-9_-]{1,4096})\s*$")


def bearer_token(authorization: str | None) -> str | None:
    """Our token from an Authorization header, or None when there is none.

    Other schemes (Basic) and other bearer tokens (an app's own) are left
    alone: they are for the app, and the cookie decides as if no token came.
    """
    if not authorization or len(authorization) > 4200:
        return None
    m = _BEARER_RE.match(authorization)
    return m.group(1) if m else None


def looks_like_ours(authorization: str | None) -> bool:
    return bool(authorization) and "fa1_" in authorization[:16]  # type: ignore[index]


@dataclass(frozen=True)
class Verified:
    token_id: str
    key_id: str
    claims: cv.Claims
    caveats: tuple[str, ...] = ()


class TokenVerifier:
    """Signature checks, memoised per key ring (a valid token is verified once).

    Only tokens whose HMAC chain verified are cached, so random tokens cannot
    fill the cache; expiry, caveats and revocation are checked on every use.
    """

    def __init__(self, ring: KeyRing, size: int = 10000):
        self.ring = ring
        self.size = size
        self._ok: LRUCache = LRUCache(maxsize=size)
        # token -> (record, account, level, Session): the principal is rebuilt
        # only when the index hands out a new record or account object, so
        # the same Session object (and its cached identity headers) is reused.
        self.principals: LRUCache = LRUCache(maxsize=size)
        # Authorization header value -> _Known: the hot path for a token seen
        # before (see `known`). Only tokens that verified and were allowed get
        # in; emptied when full (its keys come from clients).
        self.by_header: dict[str, _Known] = {}

    def known(self, authorization: str, req: OriginalRequest, index: TokenIndex, revocations: RevocationView,
              now: float) -> Credential | None:
        """The principal for an Authorization header whose token was accepted
        before, re-checked for this request: its record and account are still
        the very objects the index holds (so not revoked, not changed, account
        still active), the caveats hold at `now` for this request (expiry,
        issued, host, path, method), and the revocation snapshot does not
        revoke it. None means "not known, or something changed": the caller
        then takes the full path (`principal`), which decides and explains."""
        k = self.by_header.get(authorization)
        if k is None:
            return None
        if index.tokens.get(k.token_id) is not k.meta or index.accounts.get(k.meta.account) is not k.acct:
            return None
        c = k.claims
        if now >= c.expires or c.issued > now + 60:
            return None
        if k.restricted:
            try:
                c.check(now=now, host=req.host, path=req.paths, method=req.methods)
            except cv.CaveatError:
                return None
        if revocations.is_revoked(k.meta.account, k.token_id, c.issued):
            return None
        return k.credential

    def remember(self, authorization: str, token: str, session: Session) -> None:
        hit = self.principals.get(token)
        v = self._ok.get(token)
        if hit is None or v is None or hit[3] is not session:
            return
        if len(self.by_header) >= self.size:
            self.by_header.clear()
        c = v.claims
        self.by_header[authorization] = _Known(v.token_id, hit[0], hit[1], c, valid(session, Source.TOKEN),
                                               bool(c.hosts or c.paths or c.methods))


    def verify(self, token: str) -> Verified:
        """Raises TokenError / CaveatError with a reason safe to log."""
        hit = self._ok.get(token)
        if hit is not None:
            return hit
        m = mac.deserialize(token)
        key_id, token_id = mac.parse_identifier(m.identifier)
        mac.verify_signature(self.ring, m)
        out = Verified(token_id, key_id, cv.parse(m.caveats), m.caveats)
        self._ok[token] = out
        return out


@dataclass(frozen=True)
class _Known:
    token_id: str
    meta: TokenMeta  # the record object the index held when accepted
    acct: Principal  # the account object likewise
    claims: cv.Claims
    credential: Credential  # made once: the hot path hands out this very object
    restricted: bool


UNKNOWN = refused("unknown or revoked", Source.TOKEN)
MISMATCH = refused("does not match its record", Source.TOKEN)
NO_ACCOUNT = refused("account missing or locked", Source.TOKEN)
REVOKED = refused("revoked", Source.TOKEN)


def principal(verifier: TokenVerifier, token: str, req: OriginalRequest, index: TokenIndex,
              revocations: RevocationView, levels: Levels, now: float) -> Credential:
    """The token checked: valid (its session), or refused (the check that refused it)."""
    try:
        v = verifier.verify(token)
        v.claims.check(now=now, host=req.host, path=req.paths, method=req.methods)
        level = v.claims.level(levels)
    except (mac.TokenError, cv.CaveatError) as exc:
        return refused(str(exc), Source.TOKEN)
    meta = index.token(v.token_id)
    if meta is None:
        return UNKNOWN
    if meta.account != v.claims.account or meta.key_id != v.key_id:
        return MISMATCH
    acct = index.account(meta.account)
    if acct is None or not acct.active:
        return NO_ACCOUNT
    if revocations.is_revoked(meta.account, v.token_id, v.claims.issued):
        return REVOKED
    if not levels.at_least(meta.level, level):  # never above what was issued
        level = meta.level
    hit = verifier.principals.get(token)
    if hit is not None and hit[0] is meta and hit[1] is acct and hit[2] == level:
        return valid(hit[3], Source.TOKEN)
    session = Session(
        sid=v.token_id,
        sub=meta.account,
        level=level,
        proofs={level: v.claims.issued},
        iat=v.claims.issued,
        exp=v.claims.expires,
        seen=v.claims.issued,  # tokens are not refreshed; idle timeouts are for cookies
        email=acct.email,
        name=acct.display_name,
        groups=acct.groups,
        source="token",
    )
    verifier.principals[token] = (meta, acct, level, session)
    return valid(session, Source.TOKEN)
