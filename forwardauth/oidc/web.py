"""Upstream sign-in in the app: its routes, its factor and its sign-out step.

The provider client and the routes are made once, from the `oidc:` section
the app starts with (a reload that changes it is reported, and applies after
a restart). The factor "upstream" is always there, configured or not, so
that /oauth2/start can say a reload added a section that needs a restart.
"""

from __future__ import annotations

from aiohttp import web

from forwardauth.oidc import handlers
from forwardauth.oidc.client import ProviderClient
from forwardauth.web.context import CTX, AppContext, Contribution, Route
from forwardauth.web.factors import Factor, Need, Offer, Page
from forwardauth.web.oauth2_start import start_url

OFFER = "Sign in with your organisation's account"


async def start(request: web.Request, need: Need) -> web.StreamResponse | None:
    """The upstream provider handles a need when it is configured and the level has acr/amr values."""
    ctx = request.app[CTX]
    cfg = handlers.oidc_config(request)
    handlers.warn_if_changed(request, ctx, cfg)
    if cfg is None:
        return None
    lv = ctx.runtime.config.levels[need.level]
    if not (lv.acr or lv.amr):
        return None
    return await handlers.begin(request, need.rd, need.level, need.max_age, need.session)


def offer(request: web.Request, need: Need, where: Page) -> Offer | None:
    """On the sign-in page, when the app runs with a provider: sign in there
    instead. The settings the app started with, not the current config: an
    `oidc:` section that a reload added is not in use before a restart, and
    its button would lead nowhere."""
    if where != "sign_in" or handlers.oidc_config(request) is None:
        return None
    return Offer(OFFER, start_url(need.rd, need.level, via="upstream"))


def build(app: web.Application, ctx: AppContext) -> Contribution:
    app[handlers.CHECKED] = {"config": ctx.runtime.config}
    factor = Factor("upstream", start=start, offer=offer)
    cfg = ctx.runtime.config.sections.get("oidc")
    if cfg is None:
        return Contribution(factors=(factor,))
    app[handlers.SETTINGS] = cfg
    client = app[handlers.CLIENT] = ProviderClient(cfg)
    return Contribution(
        routes=(Route("GET", "/oauth2/callback", handlers.callback),
                Route("GET", handlers.SIGNED_OUT_PATH, handlers.signed_out)),
        factors=(factor,),
        sign_out=handlers.sign_out,
        cleanup=(client.close,),
    )
