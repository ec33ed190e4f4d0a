"""Passkeys and security keys in the app: routes, the factor, per-app state.

- the pages (webauthn.pages): /oauth2/webauthn (your keys: add, rename,
  remove), /oauth2/webauthn/step_up ("use your security key or passkey"),
  /oauth2/webauthn/sign_in ("sign in with a passkey", with autofill);
- their JSON ceremonies (webauthn.ceremonies): options, then the answer;
- the factor "webauthn" of /oauth2/start, and its offers on the sign-in and
  step-up pages of the sign-in part;
- the browser script, /oauth2/static/webauthn.js;
- the admin API routes (webauthn.api).

Without a `webauthn:` section every route answers 404 and the factor stays
out of the way; a reload can add or remove the section.
"""

from __future__ import annotations

import logging

from aiohttp import web

from forwardauth.services.account_names import account_key
from forwardauth.web.context import CTX, AppContext, Contribution, Route
from forwardauth.web.factors import Factor, Need, Offer, Page
from forwardauth.web.forms import query, redirect
from forwardauth.web.pages import STATIC_DIR
from forwardauth.webauthn import api, ceremonies, pages
from forwardauth.webauthn.common import (
    MANAGE_PATH,
    SCRIPT_PATH,
    SIGN_IN_PATH,
    STEP_UP_PATH,
    WEBAUTHN,
    PartState,
    current,
)

# --- the factor ----------------------------------------------------------------------------


async def start(request: web.Request, need: Need) -> web.StreamResponse | None:
    """/oauth2/start: the passkey sign-in page, or the security-key step-up page.

    Asked after the sign-in part and before the upstream provider: a session
    whose user has a usable key for the level goes to the step-up page; one
    without goes on to the provider when it can prove the level (it lists
    acr/amr for it), else to the step-up page, which says how to add a key.
    Without a session: the passkey page when it was chosen (`via=webauthn`)
    or when nothing else signs people in here (no `local:` or `oidc:` section).
    """
    part = current(request)
    ctx = request.app[CTX]
    if part is None or not part.settings.reaches(ctx.runtime.config.levels, need.level):
        return None
    cfg = ctx.runtime.config
    if need.session is None:
        alone = "local" not in cfg.sections and "oidc" not in cfg.sections
        if part.settings.passwordless and (need.via == "webauthn" or alone):
            return redirect(query(SIGN_IN_PATH, rd=need.rd, level=need.level))
        return None
    usable = [c for c in await part.service.store.webauthn_credentials(account_key(need.session))
              if c.locked is None]
    lv = cfg.levels[need.level]
    if not usable and "oidc" in cfg.sections and (lv.acr or lv.amr) and need.via != "webauthn":
        return None
    return redirect(query(STEP_UP_PATH, rd=need.rd, level=need.level))


def offer(request: web.Request, need: Need, where: Page) -> Offer | None:
    """The button on the sign-in part's pages (no I/O: every page view asks)."""
    part = current(request)
    ctx = request.app[CTX]
    if part is None or not part.settings.reaches(ctx.runtime.config.levels, need.level):
        return None
    if where == "sign_in" and part.settings.passwordless and need.session is None:
        return Offer("Sign in with a passkey", query(SIGN_IN_PATH, rd=need.rd, level=need.level))
    if where == "step_up" and need.session is not None:
        return Offer("Use your security key or passkey", query(STEP_UP_PATH, rd=need.rd, level=need.level))
    return None


async def script(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC_DIR / "webauthn.js").read_bytes(), content_type="text/javascript",
                        charset="utf-8", headers={"Cache-Control": "public, max-age=3600",
                                                  "X-Content-Type-Options": "nosniff"})


def build(app: web.Application, ctx: AppContext) -> Contribution:
    # fido2 logs every credential it verifies at INFO ("New credential registered: <id>"): the
    # audit log says what happened, with a fingerprint instead of the id.
    logging.getLogger("fido2").setLevel(logging.WARNING)
    app[WEBAUTHN] = PartState()
    return Contribution(
        routes=(
            Route("GET", SCRIPT_PATH, script),
            Route("GET", MANAGE_PATH, pages.manage_get),
            Route("POST", MANAGE_PATH + "/rename", pages.rename_post),
            Route("POST", MANAGE_PATH + "/remove", pages.remove_post),
            Route("GET", STEP_UP_PATH, pages.step_up_get),
            Route("GET", SIGN_IN_PATH, pages.sign_in_get),
            Route("POST", MANAGE_PATH + "/register/options", ceremonies.register_options),
            Route("POST", MANAGE_PATH + "/register", ceremonies.register),
            Route("POST", STEP_UP_PATH + "/options", ceremonies.step_up_options),
            Route("POST", STEP_UP_PATH, ceremonies.step_up),
            Route("POST", SIGN_IN_PATH + "/options", ceremonies.sign_in_options),
            Route("POST", SIGN_IN_PATH, ceremonies.sign_in),
            *api.routes(),
        ),
        factors=(Factor("webauthn", start=start, offer=offer),),
        openapi=api.OPENAPI,
    )
