"""The second factor's pages: /oauth2/totp (the code), /oauth2/step_up ("this
page needs a stronger sign-in", with every factor's offer) and
/oauth2/totp/enroll (setting up an authenticator app)."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core.levels import Level
from forwardauth.core.session import Session
from forwardauth.services.account_names import account_key
from forwardauth.signin.common import (
    MSG_CODE_FORMAT,
    MSG_CODE_REPLAYED,
    MSG_CODE_WRONG,
    MSG_CSRF,
    MSG_ENROL_BUSY,
    MSG_LEVEL_FIRST,
    MSG_LOCKED,
    MSG_NO_TOTP_LEVEL,
    MSG_SECRET_UNREADABLE,
    MSG_SESSION_ENDED,
    banned_message,
    level_of,
    local_auth,
    may_step_up,
    message,
    minutes,
    need_session,
    next_url,
    password_level,
    reason_of,
    safe_rd,
)
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.factors import Need
from forwardauth.web.facts import Facts, audit, facts
from forwardauth.web.forms import MSG_MALFORMED, FormError, csrf_ok, form_page, query, read_form, redirect
from forwardauth.web.oauth2_start import START_PATH, need_for, offers
from forwardauth.web.pages import group_secret
from forwardauth.web.unavailable import attempting


def _post_target(request: web.Request, ctx: AppContext, f: Facts, rd: str, level: str,
                 title: str) -> tuple[Level | None, web.Response | None]:
    """The level a TOTP or enrolment POST may raise the session to, or the
    answer (and audit line) refusing it: no such TOTP level (404), or the
    session is not at the level just below it (403)."""
    assert f.session is not None
    user = f.session.sub
    lv = local_auth(request).levels.get(level) if level else None
    if lv is None:
        audit(ctx, f, "totp_failed", user=user, target=rd, reason="no_totp_level")
        return None, message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not may_step_up(ctx, f.session, lv.name):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=f"level_too_low ({f.session.level})")
        return None, message(request, ctx, 403, title, error=MSG_LEVEL_FIRST, user=user,
                              link=(query(START_PATH, rd=rd, level=password_level(ctx)), "Sign in"))
    return lv, None



def _totp_reason(level: str, source: str = "local") -> str:
    first = "your password" if source == "local" else "your sign-in"
    return f"This page needs level {level}: {first} and a code from your authenticator app."



def _totp_page(request: web.Request, ctx: AppContext, status: int, f: Facts, rd: str, level: str, *,
               error: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    assert f.session is not None
    # The other parts' ways to step up (e.g. "Approve on my device"), below the code form.
    others = offers(request, ctx, Need(rd, level, None, f.session), "step_up") if level else []
    return form_page(request, ctx, "totp.html", status, form="totp", binding=f.session.sid, title="Two-step sign-in",
                 rd=rd, level=level, reason=_totp_reason(level or "?", f.session.source), user=f.session.sub,
                 issuer=local_auth(request).settings.totp.issuer, error=error, headers=headers, offers=others)



def _totp_target_level(request: web.Request, ctx: AppContext, rd: str, level: str, session: Session | None) -> str:
    """The TOTP level this challenge is for: the need of rd if TOTP proves it, else the highest TOTP level."""
    need = need_for(ctx, rd, level or None, session)
    lv = local_auth(request).totp_level_for(need.level)
    return lv.name if lv else ""



async def totp_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    f = facts(request, ctx)
    rd = safe_rd(ctx, request.query.get("rd"))
    level = _totp_target_level(request, ctx, rd, level_of(ctx, request.query.get("level")), f.session)
    if (r := need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not may_step_up(ctx, f.session, level):
        return redirect(query(START_PATH, rd=rd, level=level))
    acct = await local_auth(request).accounts.get_account(account_key(f.session))
    if acct is None or not acct.has_totp:
        return redirect(query("/oauth2/step_up", rd=rd, level=level))
    return _totp_page(request, ctx, 200, f, rd, level)



async def totp_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(request)
    f = facts(request, ctx)
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "totp_failed", user=f.session.sub if f.session else None, reason=exc.reason)
        if f.session is None:
            return message(request, ctx, exc.status, "Two-step sign-in", error=exc.message)
        return _totp_page(request, ctx, exc.status, f, safe_rd(ctx, None), "", error=exc.message)
    rd = safe_rd(ctx, form.get("rd"))
    level = _totp_target_level(request, ctx, rd, level_of(ctx, form.get("level")), f.session)
    if f.session is None:
        audit(ctx, f, "totp_failed", target=rd, reason="no_session")
        return message(request, ctx, 401, "Two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(query(START_PATH, rd=rd, level=level), "Sign in"))
    user = f.session.sub
    if not csrf_ok(request, ctx, form.get("csrf"), "totp", f.session.sid):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="csrf")
        return _totp_page(request, ctx, 403, f, rd, level, error=MSG_CSRF)
    if "code" not in form:
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="malformed_form")
        return _totp_page(request, ctx, 400, f, rd, level, error=MSG_CODE_FORMAT)
    lv, refused = _post_target(request, ctx, f, rd, level, "Two-step sign-in")
    if lv is None:
        return refused  # type: ignore[return-value]
    key = account_key(f.session)
    attempting(request, lambda why: audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=why))
    attempt = await auth.check_totp(key, form["code"], f.client, f.now)
    if attempt.ok:
        new = auth.stepped_up(f.session, lv, f.now, attempt.account)
        await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "step_up", user=user, target=rd, level=lv.name, reason="totp")
        resp = redirect(next_url(ctx, rd, lv.name, new, f.now), 303)
        resp.headers.add("Set-Cookie", ctx.session_cookie(new, f.now))
        return resp
    audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=reason_of(attempt))
    if attempt.reason == "no_totp":
        return redirect(query("/oauth2/step_up", rd=rd, level=level), 303)
    if attempt.refused:
        return _totp_page(request, ctx, 429, f, rd, level, error=banned_message(minutes(attempt)),
                          headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "locked":
        return message(request, ctx, 403, "Account locked", error=MSG_LOCKED)
    if attempt.reason == "secret_unreadable":  # sealed under a key no longer in the ring for data (logged)
        return message(request, ctx, 403, "Two-step sign-in", error=MSG_SECRET_UNREADABLE)
    if attempt.reason == "malformed_code":
        return _totp_page(request, ctx, 400, f, rd, level, error=MSG_CODE_FORMAT)
    if attempt.reason == "replayed":
        return _totp_page(request, ctx, 401, f, rd, level, error=MSG_CODE_REPLAYED)
    return _totp_page(request, ctx, 401, f, rd, level, error=MSG_CODE_WRONG)



async def step_up_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(request)
    f = facts(request, ctx)
    rd = safe_rd(ctx, request.query.get("rd"))
    level = _totp_target_level(request, ctx, rd, level_of(ctx, request.query.get("level")), f.session)
    if (r := need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not may_step_up(ctx, f.session, level):
        return redirect(query(START_PATH, rd=rd, level=level))
    acct = await auth.accounts.get_account(account_key(f.session))
    if acct is not None and acct.has_totp:
        return redirect(query("/oauth2/totp", rd=rd, level=level))
    host = urlsplit(rd).hostname or ""
    return form_page(request, ctx, "step_up.html", 200, title="This page needs a stronger sign-in",
                 reason=f"{host}{urlsplit(rd).path} needs two-step sign-in.", user=f.session.sub,
                 held_level=f.session.level, level=level, can_enrol=auth.settings.totp.self_enrolment,
                 source=f.session.source, offers=offers(request, ctx, Need(rd, level, None, f.session), "step_up"),
                 enrol_url=query("/oauth2/totp/enroll", rd=rd, level=level),
                 back_url=ctx.runtime.config.server.public_url + "/")



def _enrol_label(session: Session) -> str:
    return session.sub



def _enrol_page(request: web.Request, ctx: AppContext, status: int, f: Facts, rd: str, level: str, secret: str | None,
                *, error: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    assert f.session is not None
    auth = local_auth(request)
    key = account_key(f.session)
    e = auth.begin_enrolment(key, _enrol_label(f.session), f.now, secret)
    return form_page(request, ctx, "enroll.html", status, form="enroll", binding=f.session.sid,
                 title="Set up two-step sign-in", rd=rd, level=level, user=f.session.sub, error=error,
                 reason=f"Add {auth.settings.totp.issuer} to an authenticator app on your phone.",
                 qr_svg=e.svg, secret_grouped=group_secret(e.secret), pending=e.pending,
                 label=_enrol_label(f.session), issuer=auth.settings.totp.issuer, headers=headers)



async def enroll_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(request)
    f = facts(request, ctx)
    rd = safe_rd(ctx, request.query.get("rd"))
    level = _totp_target_level(request, ctx, rd, level_of(ctx, request.query.get("level")), f.session)
    if (r := need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not may_step_up(ctx, f.session, level):
        return redirect(query(START_PATH, rd=rd, level=level))
    if not auth.settings.totp.self_enrolment:
        return message(request, ctx, 403, "Ask an administrator",
                        "An authenticator app can only be set up by an administrator here.", user=f.session.sub)
    acct = await auth.accounts.get_account(account_key(f.session))
    if acct is not None and acct.has_totp:
        return redirect(query("/oauth2/totp", rd=rd, level=level))
    return _enrol_page(request, ctx, 200, f, rd, level, None)



async def enroll_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(request)
    f = facts(request, ctx)
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "totp_failed", user=f.session.sub if f.session else None, reason=exc.reason)
        return message(request, ctx, exc.status, "Set up two-step sign-in", error=exc.message,
                        link=("/oauth2/totp/enroll", "Start again") if f.session else None)
    rd = safe_rd(ctx, form.get("rd"))
    level = _totp_target_level(request, ctx, rd, level_of(ctx, form.get("level")), f.session)
    if f.session is None:
        audit(ctx, f, "totp_failed", target=rd, reason="no_session")
        return message(request, ctx, 401, "Set up two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(query(START_PATH, rd=rd, level=level), "Sign in"))
    user, key = f.session.sub, account_key(f.session)
    if not auth.settings.totp.self_enrolment:
        audit(ctx, f, "totp_failed", user=user, target=rd, reason="self_enrolment_off")
        return message(request, ctx, 403, "Ask an administrator",
                        "An authenticator app can only be set up by an administrator here.", user=user)
    if not csrf_ok(request, ctx, form.get("csrf"), "enroll", f.session.sid):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="csrf")
        return _enrol_page(request, ctx, 403, f, rd, level, None, error=MSG_CSRF)
    if "pending" not in form or "code" not in form:
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="malformed_form")
        return message(request, ctx, 400, "Set up two-step sign-in", error=MSG_MALFORMED,
                        link=(query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    lv, refused = _post_target(request, ctx, f, rd, level, "Set up two-step sign-in")
    if lv is None:
        return refused  # type: ignore[return-value]
    attempting(request, lambda why: audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=why))
    attempt = await auth.finish_enrolment(key, f.session, form["pending"], form["code"], f.client, f.now)
    if attempt.ok:
        new = auth.stepped_up(f.session, lv, f.now, attempt.account)
        await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "totp_enrolled", user=user, target=rd, level=lv.name, reason="self")
        audit(ctx, f, "step_up", user=user, target=rd, level=lv.name, reason="totp")
        resp = redirect(next_url(ctx, rd, lv.name, new, f.now), 303)
        resp.headers.add("Set-Cookie", ctx.session_cookie(new, f.now))
        return resp
    audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=reason_of(attempt))
    secret = auth.box.open_pending(key, form["pending"], f.now)
    if attempt.reason == "enrolment_expired" or secret is None:
        return message(request, ctx, 400, "Set up two-step sign-in",
                        error="This set-up page has expired. Please start again.",
                        link=(query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    if attempt.reason == "enrolment_busy":
        return message(request, ctx, 409, "Set up two-step sign-in", error=MSG_ENROL_BUSY,
                        link=(query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    if attempt.reason == "already_enrolled":
        return message(request, ctx, 409, "Already set up",
                        "An authenticator app is already set up for this account.",
                        link=(query("/oauth2/totp", rd=rd, level=level), "Enter a code"), user=user)
    if attempt.reason == "locked":
        return message(request, ctx, 403, "Account locked", error=MSG_LOCKED)
    if attempt.reason == "unknown_user":
        return message(request, ctx, 401, "Set up two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(query(START_PATH, rd=rd, level=level), "Sign in"))
    if attempt.refused:
        return _enrol_page(request, ctx, 429, f, rd, level, secret, error=banned_message(minutes(attempt)),
                           headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "malformed_code":
        return _enrol_page(request, ctx, 400, f, rd, level, secret, error=MSG_CODE_FORMAT)
    return _enrol_page(request, ctx, 401, f, rd, level, secret, error=MSG_CODE_WRONG)

