"""/oauth2/start: what level does the target need, and who can prove it.

The level is computed from the policy for `rd` itself, never taken from the
browser: a `level=` parameter may only ask for *more*. Authenticators (the
upstream provider, local factors) are asked in order; the first that can
raise the session to the needed level handles the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core.decision import Outcome, decide
from forwardauth.pages import page
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.request import BadRequest, build
from forwardauth.server import APP_HOOKS, CTX, Context, current_session
from forwardauth.core.session import Session


@dataclass(frozen=True)
class Need:
    rd: str  # validated target
    level: str
    max_age: float | None
    session: Session | None  # the current, valid session, if any


Authenticator = Callable[[web.Request, Need], Awaitable["web.StreamResponse | None"]]
# Tried in order; each returns a response when it handles the need, else None.
AUTHENTICATORS: list[Authenticator] = []


def need_for(ctx: Context, rd: str, asked_level: str | None, session: Session | None) -> Need:
    cfg = ctx.runtime.config
    levels = cfg.levels
    level, max_age = levels.items[0].name, None
    try:
        parts = urlsplit(rd)
        req = build(method="GET", scheme=parts.scheme, host=parts.netloc, uri=(parts.path or "/") + (
            f"?{parts.query}" if parts.query else ""), forwarded_for=None, peer=None, trusted=(), accept=None)
    except (BadRequest, ValueError):
        req = None
    if req is not None:
        # What the decision endpoint would ask of someone not signed in: every
        # reading of the path judged, the highest level and shortest max_age.
        asked = decide(req, None, cfg.policy, levels, time.time())
        if asked.outcome is Outcome.UNAUTHENTICATED and asked.required_level:
            level, max_age = asked.required_level, asked.max_age
    if asked_level in levels and not levels.at_least(level, asked_level):
        level = asked_level  # type: ignore[assignment]
    return Need(rd, level, max_age, session)


def satisfied(ctx: Context, need: Need, now: float) -> bool:
    s = need.session
    if s is None or not ctx.runtime.config.levels.at_least(s.level, need.level):
        return False
    return need.max_age is None or s.proven_since(ctx.runtime.config.levels, need.level, now - need.max_age)


async def start(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    rd = safe_redirect(request.query.get("rd"), cfg.server.public_url, cfg.server.allowed_redirect_domains)
    now = time.time()
    session, _, _ = current_session(ctx, request.cookies, now)
    need = need_for(ctx, rd, request.query.get("level"), session)
    if satisfied(ctx, need, now):
        raise web.HTTPFound(rd, headers={"Cache-Control": "no-store"})
    for authenticator in AUTHENTICATORS:
        resp = await authenticator(request, need)
        if resp is not None:
            return resp
    return page(503, "No way to sign in", f"This page needs level {need.level}, and no sign-in method "
                                         "configured here can prove it.")


def _setup(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/oauth2/start", start)


APP_HOOKS.append(_setup)
