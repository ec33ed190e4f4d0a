"""/oauth2/sign_out and /oauth2/userinfo: ending a session, and showing it.

Sign-out revokes the session id in the state store (so a copied cookie dies
too), clears the cookie, and continues through the provider's
end_session_endpoint when the session came from it and it has one.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from forwardauth.core.cookies import clear_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.server import APP_HOOKS, CTX, Context, current_session


async def sign_out(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    rd = safe_redirect(request.query.get("rd"), cfg.server.public_url, cfg.server.allowed_redirect_domains)
    session, _, _ = current_session(ctx, request.cookies, time.time())
    target = rd
    if session is not None:
        await ctx.store.revoke(session.sid, session.exp)
        await ctx.revocations.refresh(ctx.store)
        _audit_signout(request, ctx, session)
        if session.source == "oidc":
            from forwardauth.oidc.handlers import end_session_url

            target = await end_session_url(request, rd) or rd
    resp = web.Response(status=302, headers={"Location": target, "Cache-Control": "no-store"})
    resp.headers.add("Set-Cookie", clear_cookie(cfg.session, cfg.session.cookie_name))
    return resp


def _audit_signout(request: web.Request, ctx: Context, session) -> None:  # noqa: ANN001 - Session
    """One `signout` line in the audit log (forwardauth.audit), with the client as the sign-in pages see it."""
    from forwardauth.audit import for_context, request_id
    from forwardauth.signin.routes import client_of

    for_context(ctx).emit("signout", user=session.sub, client=client_of(request, ctx), host=request.host,
                          path=request.path, level=session.level, reason=session.source,
                          request_id=request_id(request.headers))


async def userinfo(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    s, _, _ = current_session(ctx, request.cookies, time.time())
    if s is None:
        return web.Response(status=401, text=json.dumps({"error": "unauthorized"}) + "\n",
                            content_type="application/json",
                            headers={"WWW-Authenticate": f'Bearer realm="{ctx.runtime.config.server.realm}"'})
    body = {"user": s.sub, "email": s.email, "name": s.name, "groups": list(s.groups), "level": s.level,
            "proven": {k: int(v) for k, v in s.proofs.items()}, "issued_at": int(s.iat), "expires_at": int(s.exp),
            "source": s.source}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _setup(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/oauth2/sign_out", sign_out)
    app.router.add_get("/oauth2/userinfo", userinfo)


APP_HOOKS.append(_setup)
