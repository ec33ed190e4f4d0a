"""The WebAuthn pages: your keys (/oauth2/webauthn), "use your security key or
passkey" (/oauth2/webauthn/step_up) and "sign in with a passkey"
(/oauth2/webauthn/sign_in). The ceremonies themselves are JSON requests from
the pages' script (webauthn.ceremonies); renaming and removing are plain forms.

The pages carry `SCRIPT_HEADERS`: the one Content-Security-Policy plus
forwardauth's own script and requests to this origin, nothing else.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core.keyring import b64d
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.records import WebAuthnCredential, WebAuthnError
from forwardauth.state.records import webauthn_fingerprint as fingerprint
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.facts import Facts, audit, facts
from forwardauth.web.forms import FormError, csrf_ok, form_page, query, read_form, redirect
from forwardauth.web.oauth2_start import need_for, satisfied, start_url
from forwardauth.web.pages import SCRIPT_HEADERS, page
from forwardauth.webauthn.common import (
    MANAGE_PATH,
    MSG_CSRF,
    MSG_STORE,
    MSG_UNAVAILABLE,
    SCRIPT_PATH,
    SIGN_IN_PATH,
    STEP_UP_PATH,
    Current,
    current,
    manage_url,
    may_change,
    safe_rd,
    target_level,
    usable,
)

FORM_MAX = 4096
DONE = {"added": "Added.", "renamed": "Renamed.", "removed": "Removed."}


def _unavailable(ctx: AppContext) -> web.Response:
    return page(404, "Not available", MSG_UNAVAILABLE, realm=ctx.runtime.config.server.realm)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else ""


def _view(c: WebAuthnCredential) -> dict[str, str]:
    """What the page shows of a credential (no key material; its id only to name it in forms)."""
    return {
        "id": c.key, "name": c.name,
        "kind": "passkey" if c.discoverable else "security key",
        "synced": ("synced" if c.backed_up else "may sync") if c.backup_eligible else "this device only",
        "verifies": "verifies you (PIN, fingerprint or face)" if c.user_verifying else "touch only",
        "created": _when(c.created), "last_used": _when(c.last_used), "locked": c.locked or "",
    }


def _rd_level(ctx: AppContext, rd_value: str | None, level_value: str | None) -> tuple[str, str]:
    """rd ("" when none was given: the keys page is also reached on its own) and a known level."""
    rd = safe_rd(ctx, rd_value) if rd_value else ""
    level = level_value if level_value and level_value in ctx.runtime.config.levels else ""
    return rd, level


# --- your keys ---------------------------------------------------------------------------------


async def _manage(request: web.Request, ctx: AppContext, part: Current, f: Facts, rd: str, level: str,
                  status: int = 200, error: str | None = None, info: str | None = None) -> web.Response:
    assert f.session is not None and f.user is not None
    creds = await part.service.store.webauthn_credentials(f.user)
    ok, needed = may_change(part, ctx, f.session, bool(creds), f.now)
    here = ctx.runtime.config.server.public_url + manage_url(rd, level)
    confirm = query(STEP_UP_PATH, rd=here, level=needed, again="1") if usable(creds) else None
    target_host = urlsplit(rd).hostname if rd else None
    return form_page(request, ctx, "webauthn.html", status, form="webauthn-manage", binding=f.session.sid,
                     headers=SCRIPT_HEADERS, scripts=(SCRIPT_PATH,), title="Security keys and passkeys",
                     user=f.session.sub, error=error, info=info, rd=rd, level=level, manage_path=MANAGE_PATH,
                     credentials=[_view(c) for c in creds], can_change=ok, needed=needed,
                     can_add=len(creds) < part.settings.max_credentials, max_credentials=part.settings.max_credentials,
                     fresh_minutes=int(part.settings.register_max_age // 60), confirm_url=confirm,
                     reauth_url=query("/oauth2/sign_out", rd=start_url(here, needed)),
                     default_name="Passkey" if not creds else f"Key {len(creds) + 1}",
                     continue_url=start_url(rd, level) if rd else None, target_host=target_host)


async def manage_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    part = current(request)
    if part is None:
        return _unavailable(ctx)
    f = facts(request, ctx)
    rd, level = _rd_level(ctx, request.query.get("rd"), request.query.get("level"))
    if f.session is None:
        return redirect(start_url(ctx.runtime.config.server.public_url + manage_url(rd, level)))
    try:
        return await _manage(request, ctx, part, f, rd, level, info=DONE.get(request.query.get("done", "")))
    except StoreUnavailable:
        return page(503, "Security keys and passkeys", MSG_STORE, realm=ctx.runtime.config.server.realm)


async def _change(request: web.Request, what: str) -> web.Response:
    """Rename or remove: a form of the keys page, for a fresh enough session."""
    ctx = request.app[CTX]
    part = current(request)
    if part is None:
        return _unavailable(ctx)
    f = facts(request, ctx)
    try:
        form = await read_form(request, (), FORM_MAX)
    except FormError as exc:
        audit(ctx, f, "webauthn_failed", user=f.user, reason=f"{what}: {exc.reason}")
        return page(exc.status, "Security keys and passkeys", exc.message, realm=ctx.runtime.config.server.realm)
    rd, level = _rd_level(ctx, form.get("rd"), form.get("level"))
    if f.session is None or f.user is None:
        audit(ctx, f, "webauthn_failed", reason=f"{what}: no session")
        return redirect(start_url(ctx.runtime.config.server.public_url + manage_url(rd, level)), 303)
    user = f.user
    try:
        if not csrf_ok(request, ctx, form.get("csrf"), "webauthn-manage", f.session.sid):
            audit(ctx, f, "webauthn_failed", user=user, reason=f"{what}: csrf")
            return await _manage(request, ctx, part, f, rd, level, 403, MSG_CSRF)
        try:
            cid = b64d(form.get("id", ""))
        except ValueError:
            cid = b""
        creds = await part.service.store.webauthn_credentials(user)
        cred = next((c for c in creds if c.id == cid), None)
        if cred is None:
            audit(ctx, f, "webauthn_failed", user=user, reason=f"{what}: no such key")
            return await _manage(request, ctx, part, f, rd, level, 404, "No such security key or passkey.")
        ok, needed = may_change(part, ctx, f.session, True, f.now)
        if not ok:
            audit(ctx, f, "webauthn_failed", user=user, level=needed, reason=f"{what}: not fresh ({needed})")
            return await _manage(request, ctx, part, f, rd, level, 403,
                                 "Confirm it is you first (see below), then try again.")
        if what == "rename":
            try:
                done = await part.service.store.rename_webauthn_credential(user, cid, form.get("name", ""))
            except WebAuthnError as exc:
                return await _manage(request, ctx, part, f, rd, level, 400, str(exc))
            event, reason = "webauthn_renamed", f"{cred.name!r} -> {form.get('name', '').strip()!r}"
        else:
            done = await part.service.store.remove_webauthn_credential(user, cid)
            event, reason = "webauthn_removed", f"{cred.name!r} by the user"
        if not done:  # removed meanwhile (another tab, an administrator)
            return await _manage(request, ctx, part, f, rd, level, 404, "No such security key or passkey.")
        audit(ctx, f, event, user=user, reason=f"{reason}; key {fingerprint(cid)}")
        return redirect(query(MANAGE_PATH, rd=rd, level=level, done=what + "d"), 303)
    except StoreUnavailable:
        return page(503, "Security keys and passkeys", MSG_STORE, realm=ctx.runtime.config.server.realm)


async def rename_post(request: web.Request) -> web.Response:
    return await _change(request, "rename")


async def remove_post(request: web.Request) -> web.Response:
    return await _change(request, "remove")


# --- use your security key or passkey -------------------------------------------------------


async def step_up_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    part = current(request)
    if part is None:
        return _unavailable(ctx)
    f = facts(request, ctx)
    rd = safe_rd(ctx, request.query.get("rd"))
    level = target_level(ctx, rd, request.query.get("level"), f.session)
    if f.session is None or f.user is None:
        return redirect(start_url(rd, level))
    again = request.query.get("again") == "1"  # prove it again, e.g. before adding a key
    if not again and satisfied(ctx, need_for(ctx, rd, level, f.session), f.now):
        return redirect(rd)
    levels = ctx.runtime.config.levels
    if not part.settings.reaches(levels, level):
        return page(404, "Not available", f"A security key or passkey cannot prove level {level} here.",
                    realm=ctx.runtime.config.server.realm)
    try:
        creds = usable(await part.service.store.webauthn_credentials(f.user))
    except StoreUnavailable:
        return page(503, "Security key", MSG_STORE, realm=ctx.runtime.config.server.realm)
    host = urlsplit(rd).hostname or ""
    # Keys that only sense a touch cannot reach a level that needs user verification: say so up front.
    no_uv_key = part.settings.needs_user_verification(levels, level) and not any(c.user_verifying for c in creds)
    return form_page(request, ctx, "webauthn_step_up.html", 200, form="webauthn-step-up", binding=f.session.sid,
                     headers=SCRIPT_HEADERS, scripts=(SCRIPT_PATH,),
                     title="Use your security key" if creds else "This page needs a security key",
                     reason=f"{host}{urlsplit(rd).path} needs level {level}.", user=f.session.sub,
                     held_level=f.session.level, level=level, rd=rd, has_keys=bool(creds), no_uv_key=no_uv_key,
                     options_path=STEP_UP_PATH + "/options", answer_path=STEP_UP_PATH,
                     manage_url=manage_url(rd, level), back_url=ctx.runtime.config.server.public_url + "/")


# --- sign in with a passkey --------------------------------------------------------------------


async def sign_in_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    part = current(request)
    if part is None or not part.settings.passwordless:
        return _unavailable(ctx)
    f = facts(request, ctx)
    rd = safe_rd(ctx, request.query.get("rd"))
    level = target_level(ctx, rd, request.query.get("level"), f.session)
    if satisfied(ctx, need_for(ctx, rd, level, f.session), f.now):
        return redirect(rd)
    cfg = ctx.runtime.config
    # The password page (via=local), else the provider; nothing when this is the only way in.
    other = start_url(rd, level, via="local") if "local" in cfg.sections else \
        start_url(rd, level, via="upstream") if "oidc" in cfg.sections else None
    return form_page(request, ctx, "webauthn_sign_in.html", 200, form="webauthn-sign-in",
                     headers=SCRIPT_HEADERS, scripts=(SCRIPT_PATH,), title="Sign in with a passkey",
                     target_host=urlsplit(rd).hostname, rd=rd, level=level, other_url=other,
                     options_path=SIGN_IN_PATH + "/options", answer_path=SIGN_IN_PATH)
