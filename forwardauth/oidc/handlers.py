"""HTTP side of the upstream sign-in: start a login, take the callback.

`begin()` is called by /oauth2/start once it has decided the upstream
provider should prove the required level. The callback validates everything
before a session exists; a provider that proved less than was asked keeps
what it proved and the user sees which level is missing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from urllib.parse import urlencode

from aiohttp import web
from cachetools import TTLCache

from forwardauth.cookies import clear_cookie, set_cookie
from forwardauth.oidc import flow
from forwardauth.oidc.client import ProviderClient, ProviderDown
from forwardauth.oidc.settings import OidcConfig
from forwardauth.pages import page
from forwardauth.redirects import safe_redirect
from forwardauth.sealing import SealError, Sealer
from forwardauth.server import APP_HOOKS, CTX, Context, current_session, session_cookie
from forwardauth.session import Session
from forwardauth.start import AUTHENTICATORS, Need

log = logging.getLogger("forwardauth.oidc")
CLIENT = web.AppKey("oidc_client", ProviderClient)
MAX_LOGINS_PER_BROWSER = 8


def oidc_config(ctx: Context) -> OidcConfig | None:
    return ctx.runtime.config.sections.get("oidc")


def callback_url(ctx: Context) -> str:
    return ctx.runtime.config.server.public_url + "/oauth2/callback"


def _sealer(ctx: Context) -> Sealer:
    return Sealer(ctx.runtime.keyring, "oidc-login")


def redirect(url: str) -> web.Response:
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


def _login_cookie(ctx: Context, state: str) -> str:
    # Scoped to /oauth2/callback, so it cannot be a __Host- cookie.
    return flow.login_cookie_name(("__Secure-" if ctx.runtime.config.session.secure else "") + "forwardauth", state)


async def begin(request: web.Request, rd: str, level: str, max_age: float | None,
                session: Session | None) -> web.Response:
    """Redirect to the provider with a step-up request for `level`."""
    ctx = request.app[CTX]
    cfg = oidc_config(ctx)
    assert cfg is not None
    try:
        # Fetched afresh for every login start (logins are rare), so a provider
        # that is down gets a clear page here instead of a browser error there.
        meta = await request.app[CLIENT].metadata(fresh=True)
    except ProviderDown as exc:
        log.warning("provider unreachable at sign-in", extra={"fields": {"error": str(exc)}})
        return page(502, "Sign-in is unavailable",
                    "The identity provider cannot be reached right now. Please try again in a minute.")
    now = time.time()
    login = flow.new_login(rd, level, max_age, now, session.sub if session else None)
    # Re-authentication is forced when someone is already signed in (step-up),
    # or when freshness is required.
    force = session is not None or max_age is not None
    url = flow.authorization_url(meta.authorization_endpoint, cfg, ctx.runtime.config.levels, login,
                                 callback_url(ctx), force)
    resp = redirect(url)
    scfg = ctx.runtime.config.session
    name = _login_cookie(ctx, login.state)
    resp.headers.add("Set-Cookie", set_cookie(scfg, name, _sealer(ctx).seal(login.to_json()),
                                              int(cfg.login_timeout), path="/oauth2/callback"))
    return resp


async def callback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cfg = oidc_config(ctx)
    if cfg is None:
        return page(404, "Not found", "Upstream sign-in is not configured.")
    try:
        return await _callback(request, ctx, cfg)
    except flow.LoginError as exc:
        log.info("sign-in refused", extra={"fields": {"reason": exc.message}})
        return page(exc.status, "Sign-in failed", exc.message, ("/oauth2/start", "Start again"))
    except ProviderDown as exc:
        return page(502, "Sign-in is unavailable", f"The identity provider cannot be reached: {exc}")


USED_STATES: TTLCache = TTLCache(maxsize=100_000, ttl=3600)


async def _callback(request: web.Request, ctx: Context, cfg: OidcConfig) -> web.Response:
    q = request.query
    state = q.get("state")
    if not state or len(state) > 256:
        raise flow.LoginError(400, "The sign-in answer has no state; start again.")
    scfg = ctx.runtime.config.session
    name = _login_cookie(ctx, state)
    sealed = request.cookies.get(name)
    if not sealed:
        raise flow.LoginError(400, "This sign-in answer does not belong to a login started in this browser "
                                   "(state mismatch or expired).")
    try:
        login = flow.LoginState.from_json(_sealer(ctx).open(sealed))
    except (SealError, ValueError, TypeError):
        raise flow.LoginError(400, "The sign-in state is invalid; start again.") from None
    now = time.time()
    if not hmac.compare_digest(login.state.encode(), state.encode()):
        raise flow.LoginError(400, "State mismatch; start again.")
    if now - login.created > cfg.login_timeout:
        raise flow.LoginError(400, "This sign-in took too long; start again.")
    if state in USED_STATES:
        raise flow.LoginError(400, "This sign-in answer was already used.")
    USED_STATES[state] = True

    if "error" in q:
        err = q.get("error", "")[:64]
        if err in ("unmet_authentication_requirements", "login_required", "interaction_required"):
            raise flow.LoginError(403, f"The identity provider could not confirm the level "
                                       f"{login.level} that this page needs ({err}).")
        raise flow.LoginError(403, f"The identity provider refused the sign-in ({err}).")
    code = q.get("code")
    if not code or len(code) > 2048:
        raise flow.LoginError(400, "The sign-in answer has no code.")

    client = request.app[CLIENT]
    tokens = await client.exchange(code, login.verifier, callback_url(ctx))
    claims = await client.verify_id_token(tokens["id_token"])
    meta = await client.metadata()
    proven = flow.check_claims(claims, cfg, meta.issuer, ctx.runtime.config.levels, login, now)
    if proven.email is None and isinstance(tokens.get("access_token"), str):
        info = await client.userinfo(tokens["access_token"])
        if info.get("sub") == proven.sub:
            proven = flow.Proven(proven.sub, proven.level, flow._text(info.get("email")),
                                 proven.name or flow._text(info.get("name")),
                                 proven.groups or tuple(g for g in info.get(cfg.groups_claim, []) or ()
                                                        if isinstance(g, str))[:256],
                                 proven.acr)
    if proven.level is None:
        raise flow.LoginError(403, "The identity provider did not prove any level configured here "
                                   f"(acr {proven.acr!r}).")

    current, _, _ = current_session(ctx, request.cookies, now)
    levels = ctx.runtime.config.levels
    if current is not None and current.sub == proven.sub:
        proofs = dict(current.proofs)
        proofs[proven.level] = now
        level = proven.level if levels.at_least(proven.level, current.level) else current.level
        new = ctx.runtime.codec.new(proven.sub, level, now, email=proven.email, name=proven.name,
                                    groups=proven.groups, proofs=proofs, source="oidc")
    else:
        # A different person (or nobody) was signed in: replace, never merge.
        new = ctx.runtime.codec.new(proven.sub, proven.level, now, email=proven.email, name=proven.name,
                                    groups=proven.groups, source="oidc")
    if current is not None and current.sid != new.sid:
        await ctx.store.revoke(current.sid, current.exp)
    log.info("signed in", extra={"fields": {"user": new.sub, "level": proven.level, "required": login.level,
                                            "source": "oidc"}})
    if not levels.at_least(proven.level, login.level):
        resp = page(403, "A stronger sign-in is needed",
                    f"You are signed in at level {proven.level}, but this page needs level {login.level}, "
                    "which your identity provider did not confirm.",
                    (login.rd, "Back to the page"))
    else:
        resp = redirect(login.rd)
    resp.headers.add("Set-Cookie", session_cookie(ctx, new, now))
    resp.headers.add("Set-Cookie", clear_cookie(scfg, name, path="/oauth2/callback"))
    return resp


SIGNED_OUT_PATH = "/oauth2/signed_out"
SIGNOUT_STATE_TTL = 600.0


async def end_session_url(request: web.Request, rd: str) -> str | None:
    """Where to send the browser after local sign-out, when the provider has RP-initiated logout.

    Providers accept only pre-registered post-logout addresses, so the provider
    always comes back to one fixed address, {public_url}/oauth2/signed_out,
    and `rd` travels sealed in `state`.
    """
    ctx = request.app[CTX]
    cfg = oidc_config(ctx)
    if cfg is None:
        return None
    try:
        meta = await request.app[CLIENT].metadata()
    except ProviderDown:
        return None
    if not meta.end_session_endpoint:
        return None
    state = Sealer(ctx.runtime.keyring, "signout").seal(json.dumps({"rd": rd, "t": time.time()}).encode())
    sep = "&" if "?" in meta.end_session_endpoint else "?"
    return meta.end_session_endpoint + sep + urlencode({
        "client_id": cfg.client_id,
        "post_logout_redirect_uri": ctx.runtime.config.server.public_url + SIGNED_OUT_PATH,
        "state": state,
    })


async def signed_out(request: web.Request) -> web.Response:
    """Back from the provider's logout: on to the `rd` sealed in `state`, re-validated."""
    ctx = request.app[CTX]
    server = ctx.runtime.config.server
    rd = None
    try:
        d = json.loads(Sealer(ctx.runtime.keyring, "signout").open(request.query.get("state", "")))
        if isinstance(d, dict) and isinstance(d.get("t"), (int, float)) and \
                time.time() - d["t"] < SIGNOUT_STATE_TTL and isinstance(d.get("rd"), str):
            rd = d["rd"]
    except (SealError, ValueError):
        rd = None
    return redirect(safe_redirect(rd, server.public_url, server.allowed_redirect_domains))


def _setup(app: web.Application, ctx: Context) -> None:
    cfg = oidc_config(ctx)
    if cfg is None:
        return
    app[CLIENT] = ProviderClient(cfg)
    app.router.add_get("/oauth2/callback", callback)
    app.router.add_get(SIGNED_OUT_PATH, signed_out)

    async def close(app: web.Application):
        yield
        await app[CLIENT].close()

    app.cleanup_ctx.append(close)


async def authenticate(request: web.Request, need: Need) -> web.StreamResponse | None:
    """The upstream provider handles a need when it is configured and the level has acr/amr values."""
    ctx = request.app[CTX]
    lv = ctx.runtime.config.levels[need.level]
    if oidc_config(ctx) is None or not (lv.acr or lv.amr):
        return None
    return await begin(request, need.rd, need.level, need.max_age, need.session)


APP_HOOKS.append(_setup)
AUTHENTICATORS.append(authenticate)
