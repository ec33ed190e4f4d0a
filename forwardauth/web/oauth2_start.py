"""/oauth2/start: what level does the target need, and which factor can prove it.

The level is computed from the policy for `rd` itself, never taken from the
browser: a `level=` parameter may only ask for *more*. The parts' factors
(web.context.Contribution.factors, in the order of composition.PARTS: local
password and TOTP, the upstream provider, ...) are asked in turn; the first
that can raise the session to the needed level handles the request.

A factor may also offer itself on the sign-in page and on the step-up page
("Sign in with your organisation's account", "Use your security key"): an
`Offer`, a label and where it leads. The sign-in part's pages list the
offers of every factor, so a new part adds its button without editing them.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from forwardauth.core.decision import Outcome, decide
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.request import BadRequest, build
from forwardauth.core.session import Session
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.factors import Need, Offer, Page
from forwardauth.web.pages import page

START_PATH = "/oauth2/start"


def start_url(rd: str, level: str = "", **more: str) -> str:
    """/oauth2/start for `rd` (and `level`, `via`, ... when given)."""
    params = {"rd": rd, "level": level, **more}
    return f"{START_PATH}?{urlencode({k: v for k, v in params.items() if v})}"


def offers(request: web.Request, ctx: AppContext, need: Need, where: Page) -> list[Offer]:
    """Every factor's offer for this page, in part order."""
    found = []
    for f in ctx.factors:
        if f.offer is not None and (o := f.offer(request, need, where)) is not None:
            found.append(o)
    return found


def need_for(ctx: AppContext, rd: str, asked_level: str | None, session: Session | None,
             via: str | None = None) -> Need:
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
    if asked_level is not None and asked_level in levels and not levels.at_least(level, asked_level):
        level = asked_level
    return Need(rd, level, max_age, session, via)


def satisfied(ctx: AppContext, need: Need, now: float) -> bool:
    s = need.session
    levels = ctx.runtime.config.levels
    if s is None or not levels.at_least(s.level, need.level):
        return False
    return need.max_age is None or s.proven_since(levels, need.level, now - need.max_age)


async def start(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    cfg = ctx.runtime.config
    rd = safe_redirect(request.query.get("rd"), cfg.server.public_url, cfg.server.allowed_redirect_domains)
    now = time.time()
    need = need_for(ctx, rd, request.query.get("level"), ctx.current_session(request, now), request.query.get("via"))
    if satisfied(ctx, need, now):
        raise web.HTTPFound(rd, headers={"Cache-Control": "no-store"})
    for factor in ctx.factors:
        if factor.start is not None and (resp := await factor.start(request, need)) is not None:
            return resp
    return page(503, "No way to sign in", f"This page needs level {need.level}, and no sign-in method "
                                         "configured here can prove it.", realm=cfg.server.realm)
