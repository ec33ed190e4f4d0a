"""Who is calling the admin API, and the JSON error answers.

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

import json
import time
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth import request as reqmod
from forwardauth.server import CTX, Context
from forwardauth.session import Session
from forwardauth.tokens import caveats as cv
from forwardauth.tokens import settings as settings_mod
from forwardauth.tokens.bearer import bearer_token, principal
from forwardauth.tokens.index import Principal
from forwardauth.tokens.plugin import stale_for, state

MAX_BODY = 16 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.headers = headers or {}


def fail(status: int, code: str, description: str, **headers: str) -> NoReturn:
    raise ApiError(status, code, description, headers)


def error_response(exc: ApiError) -> web.Response:
    body = json.dumps({"error": exc.code, "error_description": exc.description})
    return web.Response(status=exc.status, text=body, content_type="application/json", headers=exc.headers)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


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
    ctx: Context = request.app[CTX]
    cfg = ctx.runtime.config
    realm = cfg.server.realm
    auth = request.headers.get("Authorization")
    token = bearer_token(auth)
    if token is None:
        fail(401, "invalid_token" if auth else "unauthorized",
             "a forwardauth bearer token is required" if not auth else "malformed bearer token",
             **{"WWW-Authenticate": _challenge(realm, "invalid_token" if auth else None)})
    st = state(ctx)
    if stale_for(ctx, st) > settings_mod.settings(cfg).stale_grace:
        fail(503, "unavailable", "the state store is unreachable; tokens are refused", **{"Retry-After": "5"})
    verifier = st.verifier(ctx.runtime.keyring)
    req = original(request, cfg.server.public_url)
    now = time.time()
    session, why = principal(verifier, token, req, st.index, ctx.revocations, cfg.levels, now)
    if session is None and why == "token: unknown or revoked":
        await _learn(ctx, verifier, token)
        session, why = principal(verifier, token, req, st.index, ctx.revocations, cfg.levels, now)
    if session is None:
        fail(401, "invalid_token", why.removeprefix("token: "),
             **{"WWW-Authenticate": _challenge(realm, "invalid_token")})
    st.usage.used(session.sid, now)
    v = verifier.verify(token)  # memoised: verified just above
    return Caller(session, v.claims, v.caveats)


async def _learn(ctx: Context, verifier: Any, token: str) -> None:
    """Fetch one token record (and its account) the index has not loaded yet."""
    try:
        v = verifier.verify(token)
    except ValueError:
        return
    st = state(ctx)
    meta = await ctx.store.get_token(v.token_id)
    if meta is None or meta.revoked is not None:
        return
    acct = await ctx.store.get_account(meta.account)
    if acct is None:
        return
    st.index.tokens = {**st.index.tokens, meta.id: meta}
    st.index.accounts = {**st.index.accounts, acct.username: Principal(
        acct.username, acct.kind, acct.email, acct.display_name, tuple(acct.groups), acct.status == "active")}


async def body(request: web.Request, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """The JSON object body, with unknown and missing fields refused."""
    if request.content_type != "application/json":
        fail(415, "invalid_request", "the body must be application/json")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        fail(413, "invalid_request", f"the body must be at most {MAX_BODY} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        fail(400, "invalid_request", "the body is not valid JSON")
    if not isinstance(data, dict):
        fail(400, "invalid_request", "the body must be a JSON object")
    unknown = set(data) - allowed
    if unknown:
        fail(400, "invalid_request", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    missing = required - set(data)
    if missing:
        fail(400, "invalid_request", f"missing field(s): {', '.join(sorted(missing))}")
    return data
