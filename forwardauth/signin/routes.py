"""The aiohttp side of local sign-in: pages under /oauth2/, one handler each.

Handlers translate only: read and bound the form, check the CSRF token, ask
`service.LocalAuth`, write one audit line, render the answer. Every refusal
has one exact status and message (see the tests); an unknown user and a
wrong password get the same one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from forwardauth.core import request as reqmod
from forwardauth.accounts import normalise_username
from forwardauth.audit import AuditLog, request_id
from forwardauth.audit import for_context as audit_for
from forwardauth.core.decision import Decision, Outcome
from forwardauth.core.responses import Answer
from forwardauth.core.levels import Level
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.runtime import Runtime
from forwardauth.server import (ANSWER_HOOKS, APP_HOOKS, CTX, Context, current_session, peer_address,
                               session_cookie)
from forwardauth.core.session import Session
from forwardauth.signin import csrf
from forwardauth.signin.flow import Step, can_step_up, next_step
from forwardauth.signin.pages import group_secret, render, stylesheet
from forwardauth.signin.service import Attempt, LocalAuth, account_key
from forwardauth.start import AUTHENTICATORS, Need, need_for, satisfied

log = logging.getLogger("forwardauth.signin")

MAX_USERNAME = 128
MAX_PASSWORD = 1024
MAX_FIELD = 4096  # rd, csrf, pending: generous, still bounded

MSG_WRONG = "Wrong username or password."
MSG_LOCKED = "This account is locked. Ask an administrator to unlock it."
MSG_CSRF = "This form has expired or was not sent from this site. Please try again."
MSG_MALFORMED = "The form could not be read. Please try again."
MSG_TOO_LARGE = "The form is too large."
MSG_TOO_LONG = "The username or password is too long."
MSG_EMPTY = "Enter your username and password."
MSG_CODE_FORMAT = "Enter the 6-digit code from your authenticator app."
MSG_CODE_WRONG = "That code is not right. Check that your phone's clock is correct and try the next code."
MSG_CODE_REPLAYED = "That code has already been used. Wait for the next code (a new one appears every 30 seconds)."
MSG_SESSION_ENDED = "Your session has ended. Please sign in again."
MSG_LEVEL_FIRST = "Sign in with your password first, then come back to this step."
MSG_NO_TOTP_LEVEL = "No level here is proven with a one-time code."
MSG_ENROL_BUSY = ("An authenticator app is being set up for this account in another window. "
                  "Finish it there, or start again here in a minute.")


def banned_message(minutes: int) -> str:
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


# --- per-app state -------------------------------------------------------------


@dataclass
class _Holder:
    runtime: Runtime | None = None
    auth: LocalAuth | None = None


def _holder(ctx: Context) -> _Holder:
    h = ctx.extensions.get("signin")
    if h is None:
        h = ctx.extensions["signin"] = _Holder()
    return h


def local_auth(ctx: Context) -> LocalAuth:
    """The LocalAuth of the current runtime (rebuilt after a reload)."""
    h = _holder(ctx)
    if h.runtime is not ctx.runtime or h.auth is None:
        h.auth = LocalAuth(ctx.runtime, ctx.store)
        h.runtime = ctx.runtime
    return h.auth


def audit_log(ctx: Context) -> AuditLog:
    """The configured audit log (`local.audit`), shared by every part of this process."""
    return audit_for(ctx)


# --- request facts -----------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    now: float
    client: str | None
    request_id: str
    session: Session | None


def client_of(request: web.Request, ctx: Context) -> str | None:
    """The browser's address: X-Forwarded-For is believed only from a trusted proxy."""
    peer = peer_address(request)
    trusted = ctx.runtime.config.server.trusted_proxies
    if peer is not None and reqmod.is_trusted(peer, trusted):
        try:
            addr = reqmod.client_address(request.headers.get("X-Forwarded-For"), peer, trusted)
        except reqmod.BadRequest:
            addr = peer
        return str(addr) if addr else None
    return str(peer) if peer else None


def facts(request: web.Request, ctx: Context) -> Facts:
    now = time.time()
    session, _, _ = current_session(ctx, request.cookies, now)
    return Facts(now, client_of(request, ctx), request_id(request.headers), session)


def audit(ctx: Context, f: Facts, event: str, *, user: str | None = None, target: str | None = None,
          level: str | None = None, reason: str | None = None) -> None:
    host = path = None
    if target:
        parts = urlsplit(target)
        host, path = parts.hostname, parts.path or "/"
    audit_log(ctx).emit(event, user=user, client=f.client, host=host, path=path, level=level, reason=reason,
                        request_id=f.request_id)


def _rd(ctx: Context, value: str | None) -> str:
    s = ctx.runtime.config.server
    return safe_redirect(value, s.public_url, s.allowed_redirect_domains)


def _level(ctx: Context, value: str | None) -> str:
    return value if value and value in ctx.runtime.config.levels else ""


def _redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def _query(path: str, **params: str) -> str:
    return f"{path}?{urlencode({k: v for k, v in params.items() if v})}"


def _nonce(request: web.Request, ctx: Context) -> tuple[str, str | None]:
    """The browser's CSRF nonce, or a new one with the Set-Cookie that stores it."""
    cfg = ctx.runtime.config.session
    value = request.cookies.get(csrf.cookie_name(cfg.cookie_name, cfg.secure))
    if csrf.valid_nonce(value):
        return value, None  # type: ignore[return-value]
    n = csrf.new_nonce()
    return n, csrf.nonce_cookie(cfg, n)


def _csrf_ok(request: web.Request, ctx: Context, token: str | None, form: str, binding: str = "") -> bool:
    cfg = ctx.runtime.config.session
    name = csrf.cookie_name(cfg.cookie_name, cfg.secure)
    return csrf.Csrf(ctx.runtime.keyring).check(token, request.cookies.get(name), form, binding)


def _page(request: web.Request, ctx: Context, template: str, status: int = 200, *, form: str | None = None,
          binding: str = "", headers: dict[str, str] | None = None, **values: Any) -> web.Response:
    """Render a page; with `form`, include a CSRF token (and set the nonce cookie when new)."""
    set_nonce = None
    if form is not None:
        nonce, set_nonce = _nonce(request, ctx)
        values["csrf"] = csrf.Csrf(ctx.runtime.keyring).token(nonce, form, binding)
    values.setdefault("realm", ctx.runtime.config.server.realm)
    resp = render(template, status, headers=headers, **values)
    if set_nonce:
        resp.headers.add("Set-Cookie", set_nonce)
    return resp


def _message(request: web.Request, ctx: Context, status: int, title: str, text: str = "", *,
             error: str | None = None, link: tuple[str, str] | None = None, user: str | None = None,
             headers: dict[str, str] | None = None) -> web.Response:
    return _page(request, ctx, "message.html", status, title=title, text=text, error=error, user=user,
                 link_url=link[0] if link else None, link_text=link[1] if link else "", headers=headers)


# --- forms ---------------------------------------------------------------------------


class FormError(Exception):
    def __init__(self, status: int, message: str, reason: str):
        super().__init__(reason)
        self.status, self.message, self.reason = status, message, reason


async def read_form(request: web.Request, required: tuple[str, ...], max_bytes: int) -> dict[str, str]:
    """A urlencoded form, strictly: bounded size, UTF-8, each field once. Raises FormError."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise FormError(400, MSG_MALFORMED, "malformed_form")
    if request.content_length is not None and request.content_length > max_bytes:
        raise FormError(413, MSG_TOO_LARGE, "oversized_form")
    body = b""
    while True:  # read(n) may return less than n: loop until the end, or until over the limit
        chunk = await request.content.read(max_bytes + 1 - len(body))
        if not chunk:
            break
        body += chunk
        if len(body) > max_bytes:
            raise FormError(413, MSG_TOO_LARGE, "oversized_form")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          errors="strict", max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, MSG_MALFORMED, "malformed_form") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out or "\x00" in v:
            raise FormError(400, MSG_MALFORMED, "malformed_form")
        out[k] = v
    if any(k not in out for k in required):
        raise FormError(400, MSG_MALFORMED, "malformed_form")
    for k in ("rd", "csrf", "pending", "level"):
        if len(out.get(k, "")) > MAX_FIELD:
            raise FormError(400, MSG_MALFORMED, "malformed_form")
    return out


# --- /oauth2/start: the local authenticator -----------------------------------------


async def authenticate(request: web.Request, need: Need) -> web.StreamResponse | None:
    """Handles the need when a local step (password, TOTP, enrolment) can prove it."""
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    levels = ctx.runtime.config.levels
    session = need.session
    has_totp = False
    if session is not None and levels[need.level].local_factor == "totp":
        acct = await auth.accounts.get_account(account_key(session))
        has_totp = acct is not None and acct.has_totp
    step = next_step(session, need.level, levels, local_password=auth.settings.enabled, has_totp=has_totp,
                     password_level=auth.password_level.name,
                     prefer_upstream=request.query.get("via") == "upstream")
    if step is None:
        return None
    path = {Step.PASSWORD: "/oauth2/sign_in", Step.TOTP: "/oauth2/totp", Step.ENROL: "/oauth2/step_up"}[step]
    return _redirect(_query(path, rd=need.rd, level=need.level))


def _next(ctx: Context, rd: str, level: str, session: Session, now: float) -> str:
    """rd when the new session is enough for it, else back to /oauth2/start for the next step."""
    need = need_for(ctx, rd, level or None, session)
    return rd if satisfied(ctx, need, now) else _query("/oauth2/start", rd=rd, level=need.level)


def _upstream_url(ctx: Context, rd: str, level: str) -> str | None:
    if ctx.runtime.config.sections.get("oidc") is None:
        return None
    return _query("/oauth2/start", rd=rd, level=level, via="upstream")


# --- password sign-in ------------------------------------------------------------------


def _sign_in_page(request: web.Request, ctx: Context, status: int, rd: str, level: str, *, username: str = "",
                  error: str | None = None, info: str | None = None,
                  headers: dict[str, str] | None = None) -> web.Response:
    return _page(request, ctx, "sign_in.html", status, form="sign_in", title="Sign in", rd=rd, level=level,
                 username=username, error=error, info=info, target_host=urlsplit(rd).hostname,
                 upstream_url=_upstream_url(ctx, rd, level), headers=headers)


async def sign_in_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if not local_auth(ctx).settings.enabled:
        return _message(request, ctx, 404, "Not available", "Password sign-in is not enabled here.")
    q = request.query
    info = "You have signed out." if q.get("signed_out") == "1" else None
    return _sign_in_page(request, ctx, 200, _rd(ctx, q.get("rd")), _level(ctx, q.get("level")), info=info)


async def sign_in_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    f = facts(request, ctx)
    if not auth.settings.enabled:
        return _message(request, ctx, 404, "Not available", "Password sign-in is not enabled here.")
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "signin_failed", reason=exc.reason)
        return _sign_in_page(request, ctx, exc.status, _rd(ctx, None), "", error=exc.message)
    rd, level = _rd(ctx, form.get("rd")), _level(ctx, form.get("level"))
    if not _csrf_ok(request, ctx, form.get("csrf"), "sign_in"):
        audit(ctx, f, "signin_refused", target=rd, reason="csrf")
        return _sign_in_page(request, ctx, 403, rd, level, error=MSG_CSRF)
    if "username" not in form or "password" not in form:
        audit(ctx, f, "signin_failed", target=rd, reason="malformed_form")
        return _sign_in_page(request, ctx, 400, rd, level, error=MSG_MALFORMED)
    username, password = normalise_username(form["username"]), form["password"]
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        audit(ctx, f, "signin_failed", target=rd, reason="oversized_field")
        return _sign_in_page(request, ctx, 400, rd, level, error=MSG_TOO_LONG)
    if not username or not password:
        audit(ctx, f, "signin_failed", target=rd, reason="empty_field")
        return _sign_in_page(request, ctx, 400, rd, level, username=username, error=MSG_EMPTY)

    attempt = await auth.check_password(username, password, f.client, f.now)
    known = attempt.account.username if attempt.account is not None else None
    if attempt.ok:
        assert attempt.account is not None
        session = auth.signed_in(attempt.account, f.now, f.session)
        if f.session is not None and f.session.sid != session.sid:
            await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "signin_ok", user=known, target=rd, level=session.level, reason="password")
        resp = _redirect(_next(ctx, rd, level, session, f.now), 303)
        resp.headers.add("Set-Cookie", session_cookie(ctx, session, f.now))
        return resp
    if attempt.refused:
        minutes = _minutes(attempt)
        if attempt.ban_started:
            audit(ctx, f, "signin_failed", user=known, target=rd, reason=f"{attempt.reason}; ban started")
        else:
            audit(ctx, f, "signin_refused", user=known, target=rd, reason="banned")
        return _sign_in_page(request, ctx, 429, rd, level, username=username, error=banned_message(minutes),
                             headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "locked":
        audit(ctx, f, "signin_refused", user=known, target=rd, reason="locked")
        return _sign_in_page(request, ctx, 403, rd, level, username=username, error=MSG_LOCKED)
    # unknown_user, wrong_password, system_account, no_password: one answer for all
    audit(ctx, f, "signin_failed", user=known, target=rd, reason=attempt.reason)
    return _sign_in_page(request, ctx, 401, rd, level, username=username, error=MSG_WRONG)


def _reason(attempt: Attempt) -> str:
    return f"{attempt.reason}; ban started" if attempt.ban_started else attempt.reason


def _minutes(attempt: Attempt) -> int:
    return max(1, math.ceil(attempt.retry_after / 60))


# --- TOTP challenge --------------------------------------------------------------------


def _need_session(request: web.Request, ctx: Context, f: Facts, rd: str, level: str) -> web.Response | None:
    """Pages below need a session: without one, go (back) through /oauth2/start."""
    if f.session is None:
        return _redirect(_query("/oauth2/start", rd=rd, level=level))
    return None


def _password_level(ctx: Context) -> str:
    return local_auth(ctx).password_level.name


def _can_step_up(ctx: Context, session: Session, level: str) -> bool:
    """A local factor may raise `session` to `level` only from the level just
    below it, and never from below the password level (see flow.can_step_up)."""
    return can_step_up(session.level, level, ctx.runtime.config.levels, _password_level(ctx))


def _post_target(request: web.Request, ctx: Context, f: Facts, rd: str, level: str,
                 title: str) -> tuple[Level | None, web.Response | None]:
    """The level a TOTP or enrolment POST may raise the session to, or the
    answer (and audit line) refusing it: no such TOTP level (404), or the
    session is not at the level just below it (403)."""
    assert f.session is not None
    user = f.session.sub
    lv = local_auth(ctx).levels.get(level) if level else None
    if lv is None:
        audit(ctx, f, "totp_failed", user=user, target=rd, reason="no_totp_level")
        return None, _message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not _can_step_up(ctx, f.session, lv.name):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=f"level_too_low ({f.session.level})")
        return None, _message(request, ctx, 403, title, error=MSG_LEVEL_FIRST, user=user,
                              link=(_query("/oauth2/start", rd=rd, level=_password_level(ctx)), "Sign in"))
    return lv, None


def _totp_reason(level: str, source: str = "local") -> str:
    first = "your password" if source == "local" else "your sign-in"
    return f"This page needs level {level}: {first} and a code from your authenticator app."


def _totp_page(request: web.Request, ctx: Context, status: int, f: Facts, rd: str, level: str, *,
               error: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    assert f.session is not None
    return _page(request, ctx, "totp.html", status, form="totp", binding=f.session.sid, title="Two-step sign-in",
                 rd=rd, level=level, reason=_totp_reason(level or "?", f.session.source), user=f.session.sub,
                 issuer=local_auth(ctx).settings.totp.issuer, error=error, headers=headers)


def _totp_target_level(ctx: Context, rd: str, level: str, session: Session | None) -> str:
    """The TOTP level this challenge is for: the need of rd if TOTP proves it, else the highest TOTP level."""
    need = need_for(ctx, rd, level or None, session)
    lv = local_auth(ctx).totp_level_for(need.level)
    return lv.name if lv else ""


async def totp_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    f = facts(request, ctx)
    rd = _rd(ctx, request.query.get("rd"))
    level = _totp_target_level(ctx, rd, _level(ctx, request.query.get("level")), f.session)
    if (r := _need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return _message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not _can_step_up(ctx, f.session, level):
        return _redirect(_query("/oauth2/start", rd=rd, level=level))
    acct = await local_auth(ctx).accounts.get_account(account_key(f.session))
    if acct is None or not acct.has_totp:
        return _redirect(_query("/oauth2/step_up", rd=rd, level=level))
    return _totp_page(request, ctx, 200, f, rd, level)


async def totp_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    f = facts(request, ctx)
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "totp_failed", user=f.session.sub if f.session else None, reason=exc.reason)
        if f.session is None:
            return _message(request, ctx, exc.status, "Two-step sign-in", error=exc.message)
        return _totp_page(request, ctx, exc.status, f, _rd(ctx, None), "", error=exc.message)
    rd = _rd(ctx, form.get("rd"))
    level = _totp_target_level(ctx, rd, _level(ctx, form.get("level")), f.session)
    if f.session is None:
        audit(ctx, f, "totp_failed", target=rd, reason="no_session")
        return _message(request, ctx, 401, "Two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(_query("/oauth2/start", rd=rd, level=level), "Sign in"))
    user = f.session.sub
    if not _csrf_ok(request, ctx, form.get("csrf"), "totp", f.session.sid):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="csrf")
        return _totp_page(request, ctx, 403, f, rd, level, error=MSG_CSRF)
    if "code" not in form:
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="malformed_form")
        return _totp_page(request, ctx, 400, f, rd, level, error=MSG_CODE_FORMAT)
    lv, refused = _post_target(request, ctx, f, rd, level, "Two-step sign-in")
    if lv is None:
        return refused  # type: ignore[return-value]
    key = account_key(f.session)
    attempt = await auth.check_totp(key, form["code"], f.client, f.now)
    if attempt.ok:
        new = auth.stepped_up(f.session, lv, f.now, attempt.account)
        await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "step_up", user=user, target=rd, level=lv.name, reason="totp")
        resp = _redirect(_next(ctx, rd, lv.name, new, f.now), 303)
        resp.headers.add("Set-Cookie", session_cookie(ctx, new, f.now))
        return resp
    audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=_reason(attempt))
    if attempt.reason == "no_totp":
        return _redirect(_query("/oauth2/step_up", rd=rd, level=level), 303)
    if attempt.refused:
        return _totp_page(request, ctx, 429, f, rd, level, error=banned_message(_minutes(attempt)),
                          headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "locked":
        return _message(request, ctx, 403, "Account locked", error=MSG_LOCKED)
    if attempt.reason == "secret_unreadable":
        return _message(request, ctx, 500, "Two-step sign-in",
                        error="Your second factor cannot be checked right now. Please ask an administrator.")
    if attempt.reason == "malformed_code":
        return _totp_page(request, ctx, 400, f, rd, level, error=MSG_CODE_FORMAT)
    if attempt.reason == "replayed":
        return _totp_page(request, ctx, 401, f, rd, level, error=MSG_CODE_REPLAYED)
    return _totp_page(request, ctx, 401, f, rd, level, error=MSG_CODE_WRONG)


# --- "this page needs a stronger sign-in" and enrolment ------------------------------


async def step_up_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    f = facts(request, ctx)
    rd = _rd(ctx, request.query.get("rd"))
    level = _totp_target_level(ctx, rd, _level(ctx, request.query.get("level")), f.session)
    if (r := _need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return _message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not _can_step_up(ctx, f.session, level):
        return _redirect(_query("/oauth2/start", rd=rd, level=level))
    acct = await auth.accounts.get_account(account_key(f.session))
    if acct is not None and acct.has_totp:
        return _redirect(_query("/oauth2/totp", rd=rd, level=level))
    host = urlsplit(rd).hostname or ""
    return _page(request, ctx, "step_up.html", 200, title="This page needs a stronger sign-in",
                 reason=f"{host}{urlsplit(rd).path} needs two-step sign-in.", user=f.session.sub,
                 held_level=f.session.level, level=level, can_enrol=auth.settings.totp.self_enrolment,
                 source=f.session.source,
                 enrol_url=_query("/oauth2/totp/enroll", rd=rd, level=level),
                 back_url=ctx.runtime.config.server.public_url + "/")


def _enrol_label(session: Session) -> str:
    return session.sub


def _enrol_page(request: web.Request, ctx: Context, status: int, f: Facts, rd: str, level: str, secret: str | None,
                *, error: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    assert f.session is not None
    auth = local_auth(ctx)
    key = account_key(f.session)
    e = auth.begin_enrolment(key, _enrol_label(f.session), f.now, secret)
    return _page(request, ctx, "enroll.html", status, form="enroll", binding=f.session.sid,
                 title="Set up two-step sign-in", rd=rd, level=level, user=f.session.sub, error=error,
                 reason=f"Add {auth.settings.totp.issuer} to an authenticator app on your phone.",
                 qr_svg=e.svg, secret_grouped=group_secret(e.secret), pending=e.pending,
                 label=_enrol_label(f.session), issuer=auth.settings.totp.issuer, headers=headers)


async def enroll_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    f = facts(request, ctx)
    rd = _rd(ctx, request.query.get("rd"))
    level = _totp_target_level(ctx, rd, _level(ctx, request.query.get("level")), f.session)
    if (r := _need_session(request, ctx, f, rd, level)) is not None:
        return r
    assert f.session is not None
    if not level:
        return _message(request, ctx, 404, "Not available", MSG_NO_TOTP_LEVEL)
    if not _can_step_up(ctx, f.session, level):
        return _redirect(_query("/oauth2/start", rd=rd, level=level))
    if not auth.settings.totp.self_enrolment:
        return _message(request, ctx, 403, "Ask an administrator",
                        "An authenticator app can only be set up by an administrator here.", user=f.session.sub)
    acct = await auth.accounts.get_account(account_key(f.session))
    if acct is not None and acct.has_totp:
        return _redirect(_query("/oauth2/totp", rd=rd, level=level))
    return _enrol_page(request, ctx, 200, f, rd, level, None)


async def enroll_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    auth = local_auth(ctx)
    f = facts(request, ctx)
    try:
        form = await read_form(request, (), auth.settings.form_max_bytes)
    except FormError as exc:
        audit(ctx, f, "totp_failed", user=f.session.sub if f.session else None, reason=exc.reason)
        return _message(request, ctx, exc.status, "Set up two-step sign-in", error=exc.message,
                        link=("/oauth2/totp/enroll", "Start again") if f.session else None)
    rd = _rd(ctx, form.get("rd"))
    level = _totp_target_level(ctx, rd, _level(ctx, form.get("level")), f.session)
    if f.session is None:
        audit(ctx, f, "totp_failed", target=rd, reason="no_session")
        return _message(request, ctx, 401, "Set up two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(_query("/oauth2/start", rd=rd, level=level), "Sign in"))
    user, key = f.session.sub, account_key(f.session)
    if not auth.settings.totp.self_enrolment:
        audit(ctx, f, "totp_failed", user=user, target=rd, reason="self_enrolment_off")
        return _message(request, ctx, 403, "Ask an administrator",
                        "An authenticator app can only be set up by an administrator here.", user=user)
    if not _csrf_ok(request, ctx, form.get("csrf"), "enroll", f.session.sid):
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="csrf")
        return _enrol_page(request, ctx, 403, f, rd, level, None, error=MSG_CSRF)
    if "pending" not in form or "code" not in form:
        audit(ctx, f, "totp_failed", user=user, target=rd, level=level, reason="malformed_form")
        return _message(request, ctx, 400, "Set up two-step sign-in", error=MSG_MALFORMED,
                        link=(_query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    lv, refused = _post_target(request, ctx, f, rd, level, "Set up two-step sign-in")
    if lv is None:
        return refused  # type: ignore[return-value]
    attempt = await auth.finish_enrolment(key, f.session, form["pending"], form["code"], f.client, f.now)
    if attempt.ok:
        new = auth.stepped_up(f.session, lv, f.now, attempt.account)
        await ctx.store.revoke(f.session.sid, f.session.exp)
        audit(ctx, f, "totp_enrolled", user=user, target=rd, level=lv.name, reason="self")
        audit(ctx, f, "step_up", user=user, target=rd, level=lv.name, reason="totp")
        resp = _redirect(_next(ctx, rd, lv.name, new, f.now), 303)
        resp.headers.add("Set-Cookie", session_cookie(ctx, new, f.now))
        return resp
    audit(ctx, f, "totp_failed", user=user, target=rd, level=lv.name, reason=_reason(attempt))
    secret = auth.box.open_pending(key, form["pending"], f.now)
    if attempt.reason == "enrolment_expired" or secret is None:
        return _message(request, ctx, 400, "Set up two-step sign-in",
                        error="This set-up page has expired. Please start again.",
                        link=(_query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    if attempt.reason == "enrolment_busy":
        return _message(request, ctx, 409, "Set up two-step sign-in", error=MSG_ENROL_BUSY,
                        link=(_query("/oauth2/totp/enroll", rd=rd, level=level), "Start again"), user=user)
    if attempt.reason == "already_enrolled":
        return _message(request, ctx, 409, "Already set up",
                        "An authenticator app is already set up for this account.",
                        link=(_query("/oauth2/totp", rd=rd, level=level), "Enter a code"), user=user)
    if attempt.reason == "locked":
        return _message(request, ctx, 403, "Account locked", error=MSG_LOCKED)
    if attempt.reason == "unknown_user":
        return _message(request, ctx, 401, "Set up two-step sign-in", error=MSG_SESSION_ENDED,
                        link=(_query("/oauth2/start", rd=rd, level=level), "Sign in"))
    if attempt.refused:
        return _enrol_page(request, ctx, 429, f, rd, level, secret, error=banned_message(_minutes(attempt)),
                           headers={"Retry-After": str(int(attempt.retry_after) + 1)})
    if attempt.reason == "malformed_code":
        return _enrol_page(request, ctx, 400, f, rd, level, secret, error=MSG_CODE_FORMAT)
    return _enrol_page(request, ctx, 401, f, rd, level, secret, error=MSG_CODE_WRONG)


# --- home ------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    f = facts(request, ctx)
    if f.session is None:
        return _redirect(_query("/oauth2/start", rd=ctx.runtime.config.server.public_url + "/"))
    s = f.session
    return _message(request, ctx, 200, "You are signed in",
                    f"as {s.name or s.sub}, level {s.level}.", user=s.sub, link=("/oauth2/sign_out", "Sign out"))


# --- decisions that say no -------------------------------------------------------------


_denial_failed = False


def _audit_denial(ctx: Context, request: web.Request, decision: Decision, req: reqmod.OriginalRequest, ans: Answer,
                  reason: str, now: float) -> Answer:
    """A 403 from the decision endpoints is an audit event (the 401s are just "please sign in").

    The line is only queued (AuditLog.emit(background=True)): the decision
    endpoints never wait for the disk, and nothing here can fail the answer.
    """
    global _denial_failed
    if decision.outcome in (Outcome.DENIED, Outcome.FORBIDDEN):
        try:
            rid = request_id(request.headers)
            audit_log(ctx).emit("decision_denied", background=True,
                                user=decision.session.sub if decision.session else None,
                                client=str(req.client) if req.client else None, host=req.host, path=req.path,
                                level=decision.required_level, reason=decision.reason, request_id=rid, now=now)
        except Exception:  # noqa: BLE001 - the answer goes out whatever happens to its audit line
            if not _denial_failed:
                _denial_failed = True
                log.exception("could not write the audit line of a denied decision")
    return ans


# --- wiring -----------------------------------------------------------------------------------


async def _bootstrap(app: web.Application) -> None:
    ctx = app[CTX]
    auth = local_auth(ctx)
    created = await auth.bootstrap(time.time())
    if created is None:
        return
    user, password = created
    url = ctx.runtime.config.server.public_url
    # Shown once, on the terminal, on purpose: never through the JSON logs.
    sys.stderr.write(
        "\n"
        "  forwardauth: created the first administrator account\n"
        f"    username: {user}\n"
        f"    password: {password}\n"
        "  This password is shown only this once. Sign in at "
        f"{url}/oauth2/sign_in and change it with:\n"
        f"    forwardauth users passwd {user}\n\n"
    )
    sys.stderr.flush()
    audit_log(ctx).emit("account_created", user=user, reason="bootstrap")


def setup(app: web.Application, ctx: Context) -> None:
    audit_log(ctx)  # opened now: a path that cannot be written stops the start (ConfigError), not a request
    r = app.router
    r.add_get("/oauth2/static/forwardauth.css", stylesheet)
    r.add_get("/oauth2/sign_in", sign_in_get)
    r.add_post("/oauth2/sign_in", sign_in_post)
    r.add_get("/oauth2/totp", totp_get)
    r.add_post("/oauth2/totp", totp_post)
    r.add_get("/oauth2/step_up", step_up_get)
    r.add_get("/oauth2/totp/enroll", enroll_get)
    r.add_post("/oauth2/totp/enroll", enroll_post)
    r.add_get("/", home)
    app.on_startup.append(_bootstrap)

    async def close_audit(app: web.Application):
        yield
        a = app[CTX].extensions.get("audit")
        if a is not None:
            a.close()

    app.cleanup_ctx.append(close_audit)


APP_HOOKS.append(setup)
AUTHENTICATORS.insert(0, authenticate)
ANSWER_HOOKS.append(_audit_denial)
