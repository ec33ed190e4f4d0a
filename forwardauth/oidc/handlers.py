"""HTTP side of the upstream sign-in: start a login, take the callback.

`begin()` is called by /oauth2/start once it has decided the upstream
provider should prove the required level. The callback validates everything
before a session exists; a provider that proved less than was asked keeps
what it proved and the user sees which level is missing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from forwardauth.core.cookies import set_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.core.session import Session
from forwardauth.oidc import flow
from forwardauth.oidc.client import ProviderClient, ProviderDown
from forwardauth.oidc.settings import OidcConfig
from forwardauth.services.audit import request_id
from forwardauth.state.base import StoreUnavailable
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.pages import continue_to, page

log = logging.getLogger("forwardauth.oidc")
CLIENT = web.AppKey("oidc_client", ProviderClient)
# The `oidc:` section the app was built with. The provider client and the
# routes are made once, so every handler uses these settings too: a reload
# (SIGHUP) that changes the section is reported, and applies after a restart.
SETTINGS = web.AppKey("oidc_settings", OidcConfig)

# Per-login cookies. Each browser tab's login has its own cookie (so parallel
# logins work), scoped to /oauth2/ so /oauth2/start sees the ones already
# there and can drop the oldest: together they must stay far below the
# 8 KB a server accepts for the Cookie header, next to a session cookie of up
# to 3.8 KB.
LOGIN_PATH = "/oauth2/"
MAX_LOGINS_PER_BROWSER = 4  # live login cookies, the newest kept
LOGIN_COOKIES_BUDGET = 3500  # bytes of login cookies (name=value) in one Cookie header
MAX_LOGIN_RD = 2000  # characters of `rd` a login carries (its cookie stays under ~3 KB)


def oidc_config(request: web.Request) -> OidcConfig | None:
    """The settings this app runs with (see SETTINGS)."""
    return request.app.get(SETTINGS)


def callback_url(ctx: AppContext) -> str:
    return ctx.runtime.config.server.public_url + "/oauth2/callback"


def _sealer(ctx: AppContext) -> Sealer:
    return Sealer(ctx.runtime.keyring, "oidc-login")


def redirect(url: str) -> web.Response:
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


def _login_prefix(ctx: AppContext) -> str:
    # Scoped to /oauth2/, so it cannot be a __Host- cookie.
    return ("__Secure-" if ctx.runtime.config.session.secure else "") + "forwardauth"


def _login_cookie(ctx: AppContext, state: str) -> str:
    return flow.login_cookie_name(_login_prefix(ctx), state)


def login_set_cookie(ctx: AppContext, name: str, value: str, max_age: int) -> str:
    """Set-Cookie for a per-login cookie: always SameSite=Lax, whatever `session.same_site` says.

    The provider sends the browser back to the callback with a cross-site
    navigation, which a SameSite=Strict cookie would not come with.
    """
    return set_cookie(replace(ctx.runtime.config.session, same_site="Lax"), name, value, max_age, LOGIN_PATH)


def _stale_logins(request: web.Request, ctx: AppContext, cfg: OidcConfig, new_bytes: int, now: float) -> list[str]:
    """Names of this browser's login cookies to clear so that, with a new one of
    `new_bytes`, at most MAX_LOGINS_PER_BROWSER and LOGIN_COOKIES_BUDGET bytes remain.
    The oldest go first; expired or unreadable ones always go."""
    prefix = _login_prefix(ctx) + "_login_"
    sealer = _sealer(ctx)
    found: list[tuple[float, str, int]] = []
    for name, value in request.cookies.items():
        if not name.startswith(prefix):
            continue
        try:
            created = flow.LoginState.from_json(sealer.open(value)).created
        except (SealError, ValueError, TypeError):
            created = -math.inf
        found.append((created, name, len(name) + len(value) + 2))
    found.sort(reverse=True)
    kept, used, stale = 1, new_bytes, []
    for created, name, size in found:
        if now - created > cfg.login_timeout or kept >= MAX_LOGINS_PER_BROWSER or used + size > LOGIN_COOKIES_BUDGET:
            stale.append(name)
        else:
            kept, used = kept + 1, used + size
    return stale


def _too_long(rd: str) -> web.Response:
    return page(400, "Address too long",
                f"The address to return to after signing in is {len(rd)} characters long; at most "
                f"{MAX_LOGIN_RD} are kept during a sign-in. Open a shorter address of the site and sign in from there.")


async def begin(request: web.Request, rd: str, level: str, max_age: float | None,
                session: Session | None) -> web.Response:
    """Redirect to the provider with a step-up request for `level`."""
    ctx = request.app[CTX]
    cfg = oidc_config(request)
    assert cfg is not None
    if len(rd) > MAX_LOGIN_RD:
        return _too_long(rd)
    try:
        # Cached metadata while the provider answers; a provider that is down
        # gets a clear page here instead of a browser error there.
        meta = await request.app[CLIENT].metadata_for_login()
    except ProviderDown as exc:
        log.warning("provider unreachable at sign-in", extra={"fields": {"error": str(exc)}})
        return page(502, "Sign-in is unavailable",
                    "The identity provider cannot be reached right now. Please try again in a minute.")
    now = time.time()
    # Re-authentication is forced when someone is already signed in (step-up),
    # or when freshness is required.
    forced = session is not None or max_age is not None
    # login_hint only for the provider's own subject: a local account's name means nothing there.
    hint = session.sub if session is not None and session.source == "oidc" else None
    login = flow.new_login(rd, level, max_age, now, hint, forced)
    try:
        sealed = _sealer(ctx).seal(login.to_json())
    except SealError:
        return _too_long(rd)
    url = flow.authorization_url(meta.authorization_endpoint, cfg, ctx.runtime.config.levels, login,
                                 callback_url(ctx), forced)
    resp = redirect(url)
    name = _login_cookie(ctx, login.state)
    for stale in _stale_logins(request, ctx, cfg, len(name) + len(sealed) + 2, now):
        resp.headers.add("Set-Cookie", login_set_cookie(ctx, stale, "", 0))
    resp.headers.add("Set-Cookie", login_set_cookie(ctx, name, sealed, int(cfg.login_timeout)))
    return resp


def _audit(request: web.Request, ctx: AppContext, event: str, user: str | None, level: str | None, reason: str,
           rd: str | None = None) -> None:
    """One line in the audit log (never a code, token or cookie: `reason` is a safe message)."""
    host = path = None
    if rd:
        parts = urlsplit(rd)
        host, path = parts.hostname, parts.path or "/"
    ctx.audit.emit(event, user=user, client=ctx.client(request), host=host, path=path, level=level,
                   reason=reason, request_id=request_id(request.headers))


async def callback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cfg = oidc_config(request)
    if cfg is None:
        return page(404, "Not found", "Upstream sign-in is not configured.")
    warn_if_changed(request, ctx, cfg)
    try:
        return await _callback(request, ctx, cfg)
    except flow.LoginError as exc:
        log.info("sign-in refused", extra={"fields": {"reason": exc.message}})
        _audit(request, ctx, "signin_refused", None, None, f"oidc: {exc.message}")
        return page(exc.status, "Sign-in failed", exc.message, ("/oauth2/start", "Start again"))
    except ProviderDown as exc:
        _audit(request, ctx, "signin_refused", None, None, f"oidc: provider unavailable ({exc})")
        return page(502, "Sign-in is unavailable", f"The identity provider cannot be reached: {exc}")
    except StateStoreDown as exc:
        log.warning("state store unreachable at the sign-in callback", extra={"fields": {"error": str(exc)}})
        _audit(request, ctx, "signin_refused", None, None, "oidc: state store unavailable")
        return page(503, "Sign-in is unavailable",
                    "The sign-in could not be completed because forwardauth's state store cannot be reached "
                    "right now. Please start again in a minute.", ("/oauth2/start", "Start again"))


# Each sign-in answer (its state) is used once, in every process and replica:
# the state is claimed in the shared state store (`claim_once`) for as long as
# its login can last, plus a margin for clocks. A state store that cannot be
# reached refuses the answer (503): without the claim a replay would not be seen.
STATE_CLAIM_MARGIN = 60.0


def state_claim_key(state: str) -> str:
    """What the store keeps for a state: a hash, never the state itself."""
    return "oidc-state:" + hashlib.sha256(state.encode()).hexdigest()


class StateStoreDown(Exception):
    """The state store did not answer at the callback."""


async def _callback(request: web.Request, ctx: AppContext, cfg: OidcConfig) -> web.Response:
    q = request.query
    state = q.get("state")
    if not state or len(state) > 256:
        raise flow.LoginError(400, "The sign-in answer has no state; start again.")
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
    try:
        first = await ctx.store.claim_once(state_claim_key(state), cfg.login_timeout + STATE_CLAIM_MARGIN, now)
    except StoreUnavailable as exc:
        raise StateStoreDown(str(exc)) from None
    if not first:
        raise flow.LoginError(400, "This sign-in answer was already used.")

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
            proven = replace(proven, email=flow._text(info.get("email")),
                             name=proven.name or flow._text(info.get("name")),
                             groups=proven.groups or flow.groups_of(info.get(cfg.groups_claim)))
    if proven.level is None:
        raise flow.LoginError(403, "The identity provider did not prove any level configured here "
                                   f"(acr {proven.acr!r}).")

    current = ctx.current_session(request, now)
    levels = ctx.runtime.config.levels
    proven_at = flow.proof_time(proven, login, now)
    if current is not None and current.source == "oidc" and current.sub == proven.sub:
        # The same upstream person: keep what they proved before.
        proofs = dict(current.proofs)
        if proven_at is not None:
            proofs[proven.level] = max(proven_at, proofs.get(proven.level, proven_at))
        level = proven.level if levels.at_least(proven.level, current.level) else current.level
    else:
        # Nobody, a different person, or someone from another source (a local
        # account may share the name): replace, never merge.
        proofs = {proven.level: proven_at} if proven_at is not None else {}
        level = proven.level
    new = ctx.runtime.codec.new(proven.sub, level, now, email=proven.email, name=proven.name,
                                groups=proven.groups, proofs=proofs, source="oidc")
    if current is not None and current.sid != new.sid:
        await ctx.store.revoke(current.sid, current.exp)
    log.info("signed in", extra={"fields": {"user": new.sub, "level": proven.level, "required": login.level,
                                            "source": "oidc"}})
    if not levels.at_least(proven.level, login.level):
        _audit(request, ctx, "signin_ok", new.sub, new.level,
               f"oidc: proved {proven.level}, below the {login.level} asked for", login.rd)
        resp = page(403, "A stronger sign-in is needed",
                    f"You are signed in at level {proven.level}, but this page needs level {login.level}, "
                    "which your identity provider did not confirm.",
                    (login.rd, "Back to the page"))
    else:
        _audit(request, ctx, "signin_ok", new.sub, new.level, f"oidc: proved {proven.level}", login.rd)
        # For `session.same_site: strict`: the callback is reached by a cross-site
        # navigation from the provider, and a browser does not send a Strict cookie
        # anywhere along a redirect chain that started cross-site, so a 302 to the
        # app would arrive without the new session and start the sign-in again, in
        # a loop. A navigation started by a page of this site is same-site.
        resp = continue_to(login.rd) if ctx.runtime.config.session.same_site == "Strict" else redirect(login.rd)
    resp.headers.add("Set-Cookie", ctx.session_cookie(new, now))
    resp.headers.add("Set-Cookie", login_set_cookie(ctx, name, "", 0))
    return resp


CHECKED = web.AppKey("oidc_checked_config", dict)


def warn_if_changed(request: web.Request, ctx: AppContext, started: OidcConfig | None) -> None:
    """Once per loaded config: say so when a reload changed the `oidc:` section (it needs a restart)."""
    now_cfg = ctx.runtime.config
    checked = request.app[CHECKED]
    if checked.get("config") is now_cfg:
        return
    checked["config"] = now_cfg
    if now_cfg.sections.get("oidc") != started:
        log.warning("the oidc section changed on reload; restart forwardauth to apply it "
                    "(the settings it started with stay in use)")


SIGNED_OUT_PATH = "/oauth2/signed_out"
SIGNOUT_STATE_TTL = 600.0


async def end_session_url(request: web.Request, rd: str) -> str | None:
    """Where to send the browser after local sign-out, when the provider has RP-initiated logout.

    Providers accept only pre-registered post-logout addresses, so the provider
    always comes back to one fixed address, {public_url}/oauth2/signed_out,
    and `rd` travels sealed in `state`.
    """
    ctx = request.app[CTX]
    cfg = oidc_config(request)
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


async def sign_out(request: web.Request, session: Session, rd: str) -> str | None:
    """After a local sign-out of a session that came from the provider: its logout, when it has one."""
    if session.source != "oidc":
        return None
    return await end_session_url(request, rd)
