"""/oauth2/sign_in (the password form) and / (who am I signed in as)."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.services.account_names import normalise_username
from forwardauth.signin.common import (
    MAX_PASSWORD,
    MAX_USERNAME,
    MSG_CSRF,
    MSG_EMPTY,
    MSG_LOCKED,
    MSG_TOO_LONG,
    MSG_WRONG,
    banned_message,
    level_of,
    local_auth,
    message,
    minutes,
    next_url,
    safe_rd,
)
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.factors import Need
from forwardauth.web.facts import audit, facts
from forwardauth.web.forms import MSG_MALFORMED, FormError, csrf_ok, form_page, query, read_form, redirect
from forwardauth.web.oauth2_start import START_PATH, offers
from forwardauth.web.unavailable import attempting


def sign_in_page(request: web.Request, ctx: AppContext, status: int, rd: str, level: str, *, username: str = "",
                  error: str | None = None, info: str | None = None,
                  headers: dict[str, str] | None = None) -> web.Response:
    return form_page(request, ctx, "sign_in.html", status, form="sign_in", title="Sign in", rd=rd, level=level,
                 username=username, error=error, info=info, target_host=urlsplit(rd).hostname,
                 offers=offers(request, ctx, Need(rd, level, None, None), "sign_in"), headers=headers)



async def sign_in_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if not local_auth(request).settings.enabled:
        return message(request, ctx, 404, "Not available", "Password sign-in is not enabled here.")
    q = request.query
    info = "You have signed out." if q.get("signed_out") == "1" else None
    return sign_in_page(request, ctx, 200, safe_rd(ctx, q.get("rd")), level_of(ctx, q.get("level")), info=info)



async def sign_in_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(request)
    f = facts(request, ctx)
    if not auth.settings.enabled:
        return message(request, ctx, 404, "Not available", "Password sign-in is not enabled here.")
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "signin_failed", reason=exc.reason)
        return sign_in_page(request, ctx, exc.status, safe_rd(ctx, None), "", error=exc.message)
    rd, level = safe_rd(ctx, form.get("rd")), level_of(ctx, form.get("level"))
    if not csrf_ok(request, ctx, form.get("csrf"), "sign_in"):
        audit(ctx, f, "signin_refused", target=rd, reason="csrf")
        return sign_in_page(request, ctx, 403, rd, level, error=MSG_CSRF)
    if "username" not in form or "password" not in form:
        audit(ctx, f, "signin_failed", target=rd, reason="malformed_form")
        return sign_in_page(request, ctx, 400, rd, level, error=MSG_MALFORMED)
    username, password = normalise_username(form["username"]), form["password"]
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        audit(ctx, f, "signin_failed", target=rd, reason="oversized_field")
        return sign_in_page(request, ctx, 400, rd, level, error=MSG_TOO_LONG)
    if not username or not password:
        audit(ctx, f, "signin_failed", target=rd, reason="empty_field")
        return sign_in_page(request, ctx, 400, rd, level, username=username, error=MSG_EMPTY)

    # The store failing under the check: a 503 page, and this line (web.unavailable).
    # An unknown username is never written down, and whether this one is known cannot be read.
    attempting(request, lambda why: audit(ctx, f, "signin_refused", target=rd, reason=why))
    attempt = await auth.check_password(username, password, f.client, f.now)
    known = attempt.account.username if attempt.account is not None else None
    if attempt.ok:
        assert attempt.account is not None
        session = auth.signed_in(attempt.account, f.now, f.session)
        if f.session is not None and f.session.sid != session.sid:
            await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "signin_ok", user=known, target=rd, level=session.level, reason="password")
        resp = redirect(next_url(ctx, rd, level, session, f.now), 303)
        resp.headers.add("Set-Cookie", ctx.session_cookie(session, f.now))
        return resp
    if attempt.refused:
        mins = minutes(attempt)
        if attempt.ban_started:
            audit(ctx, f, "signin_failed", user=known, target=rd, reason=f"{attempt.reason}; ban started")
        else:
            audit(ctx, f, "signin_refused", user=known, target=rd, reason="banned")
        return sign_in_page(request, ctx, 429, rd, level, username=username, error=banned_message(mins),
                             headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "locked":
        audit(ctx, f, "signin_refused", user=known, target=rd, reason="locked")
        return sign_in_page(request, ctx, 403, rd, level, username=username, error=MSG_LOCKED)
    # unknown_user, wrong_password, system_account, no_password: one answer for all
    audit(ctx, f, "signin_failed", user=known, target=rd, reason=attempt.reason)
    return sign_in_page(request, ctx, 401, rd, level, username=username, error=MSG_WRONG)



async def home(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    f = facts(request, ctx)
    if f.session is None:
        return redirect(query(START_PATH, rd=ctx.runtime.config.server.public_url + "/"))
    s = f.session
    return message(request, ctx, 200, "You are signed in",
                    f"as {s.name or s.sub}, level {s.level}.", user=s.sub, link=("/oauth2/sign_out", "Sign out"))

