"""/oauth2/sign_out and /oauth2/userinfo: ending a session, and showing it.

Sign-out revokes the session id in the state store (so a copied cookie dies
too), clears the cookie, and continues where a part says (the upstream
provider's end_session_endpoint, for a session that came from it), else to
`rd`. When the store cannot record it, see `sign_out`.
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from forwardauth.core.cookies import clear_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.session import Session
from forwardauth.services.audit import request_id
from forwardauth.state.base import StoreUnavailable
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.pages import page

log = logging.getLogger("forwardauth")


NOT_RECORDED_TITLE = "Signed out in this browser only"
NOT_RECORDED = ("You are signed out in this browser: its session cookie is deleted. The server could not "
                "record the sign-out just now (its data store cannot be reached), so a copy of this session "
                "kept elsewhere would still be let in by other servers until it is recorded. This server "
                "refuses it already and records it as soon as the store is back. On a shared computer, close "
                "the browser; to be sure, sign out again in a minute.")


async def sign_out(request: web.Request) -> web.Response:
    """The cookie is cleared in every case. When the store cannot record the
    revocation, this process refuses the session at once and writes it when
    the store is back (Revocations.remember), and the page says so plainly
    (503): the person must not believe a copied cookie is dead everywhere."""
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    rd = safe_redirect(request.query.get("rd"), cfg.server.public_url, cfg.server.allowed_redirect_domains)
    session = ctx.current_session(request)
    target = rd
    recorded = True
    if session is not None:
        try:
            await ctx.store.revoke(session.sid, session.exp)
        except StoreUnavailable as exc:
            recorded = False
            ctx.revocations.remember(session.sid, session.exp)
            log.warning("sign-out not recorded in the state store (this process refuses the session and "
                        "records it when the store is back): %s", exc)
        else:
            await ctx.revocations.refresh(ctx.store)
        _audit_signout(request, ctx, session, recorded)
        if recorded:
            for hook in ctx.sign_out:
                if (found := await hook(request, session, rd)) is not None:
                    target = found
                    break
    clear = clear_cookie(cfg.session, cfg.session.cookie_name)
    if not recorded:
        resp = page(503, NOT_RECORDED_TITLE, NOT_RECORDED, (target, "Continue"), realm=cfg.server.realm)
        resp.headers["Retry-After"] = "60"
    else:
        resp = web.Response(status=302, headers={"Location": target, "Cache-Control": "no-store"})
    resp.headers.add("Set-Cookie", clear)
    return resp


def _audit_signout(request: web.Request, ctx: AppContext, session: Session, recorded: bool = True) -> None:
    """One `signout` line in the audit log, with the client as the sign-in pages see it."""
    reason = session.source if recorded else f"{session.source}; revocation not recorded: state store unavailable"
    ctx.audit.emit("signout", user=session.sub, client=ctx.client(request), host=request.host,
                   path=request.path, level=session.level, reason=reason,
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
