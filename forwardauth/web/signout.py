"""/oauth2/sign_out and /oauth2/userinfo: ending a session, and showing it.

Sign-out revokes the session id in the state store (so a copied cookie dies
too), clears the cookie, and continues where a part says (the upstream
provider's end_session_endpoint, for a session that came from it), else to
`rd`.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from forwardauth.core.cookies import clear_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.session import Session
from forwardauth.services.audit import request_id
from forwardauth.web.context import CTX, AppContext


async def sign_out(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    rd = safe_redirect(request.query.get("rd"), cfg.server.public_url, cfg.server.allowed_redirect_domains)
    session = ctx.current_session(request)
    target = rd
    if session is not None:
        await ctx.store.revoke(session.sid, session.exp)
        await ctx.revocations.refresh(ctx.store)
        _audit_signout(request, ctx, session)
        for hook in ctx.sign_out:
            if (found := await hook(request, session, rd)) is not None:
                target = found
                break
    resp = web.Response(status=302, headers={"Location": target, "Cache-Control": "no-store"})
    resp.headers.add("Set-Cookie", clear_cookie(cfg.session, cfg.session.cookie_name))
    return resp


def _audit_signout(request: web.Request, ctx: AppContext, session: Session) -> None:
    """One `signout` line in the audit log, with the client as the sign-in pages see it."""
    ctx.audit.emit("signout", user=session.sub, client=ctx.client(request), host=request.host,
                   path=request.path, level=session.level, reason=session.source,
                   request_id=request_id(request.headers))


async def userinfo(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    s = ctx.current_session(request, time.time())
    if s is None:
        return web.Response(status=401, text=json.dumps({"error": "unauthorized"}) + "\n",
                            content_type="application/json",
                            headers={"WWW-Authenticate": f'Bearer realm="{ctx.runtime.config.server.realm}"'})
    body = {"user": s.sub, "email": s.email, "name": s.name, "groups": list(s.groups), "level": s.level,
            "proven": {k: int(v) for k, v in s.proofs.items()}, "issued_at": int(s.iat), "expires_at": int(s.exp),
            "source": s.source}
    return web.json_response(body, headers={"Cache-Control": "no-store"})
