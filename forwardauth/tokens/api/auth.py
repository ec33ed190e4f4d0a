"""Who is calling the admin API: the API caller authentication this part
offers every part's admin routes (web.context.Contribution.api_auth).

Callers authenticate with a forwardauth bearer token, checked exactly as on
the decision endpoints (signature, caveats against this request, index,
revocation), except that a token the in-memory index has not heard of yet is
looked up in the store (the API may do I/O; the decision endpoints may not).

The caveats are checked against this API request as the server sees it: its
method and path, and for `host=` caveats the host of `server.public_url`,
never the Host header the client chose (a token narrowed to `host=app.test`
must not reach the API by sending `Host: app.test`). A token that carries
anything beyond the four caveats forwardauth mints (account, level, issued,
expires) is *narrowed* (attenuated by its holder, or issued with host, path or
method limits); the routes refuse to let a narrowed token issue tokens or be
exchanged into a JWT wider than itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core import request as reqmod
from forwardauth.core.session import Session
from forwardauth.tokens import caveats as cv
from forwardauth.tokens.bearer import TokenVerifier, bearer_token, principal
from forwardauth.tokens.decisions import BearerTokens
from forwardauth.tokens.index import Principal
from forwardauth.web.api import fail
from forwardauth.web.context import CTX, AppContext

TOKENS = web.AppKey("tokens", BearerTokens)


def original(request: web.Request, public_url: str) -> reqmod.OriginalRequest:
    """This API request as an OriginalRequest, for the token's caveats. The
    host is `server.public_url`'s, not the client's Host header."""
    try:
        parts = urlsplit(public_url)
        host, port = reqmod.parse_host(parts.netloc)
        # The raw path, judged under every reading (paths.py), as on the
        # decision endpoints: aiohttp's request.path is already decoded.
        raw_path = request.raw_path.partition("?")[0]
        paths = reqmod.path_readings(raw_path)
        return reqmod.OriginalRequest(method=request.method, scheme=parts.scheme or "https", host=host, port=port,
                                      path=paths[0], raw_uri=raw_path, client=None, paths=paths)
    except reqmod.BadRequest as exc:
        fail(400, "invalid_request", str(exc))


MINTED = ("account", "level", "issued", "expires")


@dataclass(frozen=True)
class Caller:
    """Who called: the principal, and what their token's caveats say."""

    session: Session
    claims: cv.Claims
    caveats: tuple[str, ...]

    @property
    def restricted(self) -> bool:
        """Limited to hosts, paths or methods (a JWT cannot carry such limits)."""
        c = self.claims
        return bool(c.hosts or c.paths or c.methods)

    @property
    def narrowed(self) -> bool:
        """Anything but exactly the four caveats forwardauth mints."""
        return sorted(x.partition("=")[0] for x in self.caveats) != sorted(MINTED)


def _challenge(realm: str, error: str | None = None) -> str:
    return f'Bearer realm="{realm}"' + (f', error="{error}"' if error else "")


async def caller(request: web.Request) -> Caller:
    """The calling account's session-like principal and caveats, or a 401/503 ApiError."""
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    realm = cfg.server.realm
    auth = request.headers.get("Authorization")
    token = bearer_token(auth)
    if token is None:
        fail(401, "invalid_token" if auth else "unauthorized",
             "a forwardauth bearer token is required" if not auth else "malformed bearer token",
             **{"WWW-Authenticate": _challenge(realm, "invalid_token" if auth else None)})
    st = request.app[TOKENS]
    if not ctx.policy.checkable(ctx.health()):
        fail(503, "unavailable", "the state store is unreachable; tokens are refused", **{"Retry-After": "5"})
    verifier = st.verifier(ctx.runtime.keyring)
    req = original(request, cfg.server.public_url)
    now = time.time()
    found = principal(verifier, token, req, st.index, ctx.revocations, cfg.levels, now)
    if found.session is None and found.reason == "unknown or revoked":
        await _learn(ctx, st, verifier, token)
        found = principal(verifier, token, req, st.index, ctx.revocations, cfg.levels, now)
    session = found.session
    if session is None:
        fail(401, "invalid_token", found.reason, **{"WWW-Authenticate": _challenge(realm, "invalid_token")})
    st.usage.used(session.sid, now)
    v = verifier.verify(token)  # memoised: verified just above
    return Caller(session, v.claims, v.caveats)


async def _learn(ctx: AppContext, st: BearerTokens, verifier: TokenVerifier, token: str) -> None:
    """Fetch one token record (and its account) the index has not loaded yet."""
    try:
        v = verifier.verify(token)
    except ValueError:
        return
    meta = await ctx.store.get_token(v.token_id)
    if meta is None or meta.revoked is not None:
        return
    acct = await ctx.store.get_account(meta.account)
    if acct is None:
        return
    st.index.tokens = {**st.index.tokens, meta.id: meta}
    st.index.accounts = {**st.index.accounts, acct.username: Principal(
        acct.username, acct.kind, acct.email, acct.display_name, tuple(acct.groups), acct.status == "active")}
