"""Local sign-in in the app: its routes, its factor and what it offers other parts.

- the pages (signin.password, signin.totp_pages);
- the factor "local" of /oauth2/start: the password page, the TOTP
  challenge or the step-up page, whichever `flow.next_step` says;
- at start, the bootstrap administrator when there are no accounts yet;
- the password grant of the admin API's token exchange (web.api): a password
  and a TOTP code checked as the sign-in form checks them.
"""

from __future__ import annotations

import sys
import time

from aiohttp import web

from forwardauth.signin import password, totp_pages
from forwardauth.signin.common import SIGNIN, SigninState, local_auth
from forwardauth.signin.flow import Step, next_step
from forwardauth.signin.service import account_key
from forwardauth.web.api import fail
from forwardauth.web.context import CTX, AppContext, Contribution, Grant, Route
from forwardauth.web.factors import Factor, Need
from forwardauth.web.forms import query, redirect
from forwardauth.web.unavailable import attempting


async def authenticate(request: web.Request, need: Need) -> web.StreamResponse | None:
    """Handles the need when a local step (password, TOTP, enrolment) can prove it."""
    ctx = request.app[CTX]
    auth = local_auth(request)
    levels = ctx.runtime.config.levels
    session = need.session
    has_totp = False
    if session is not None and levels[need.level].local_factor == "totp":
        acct = await auth.accounts.get_account(account_key(session))
        has_totp = acct is not None and acct.has_totp
    # Another factor chosen on the sign-in page ("Sign in with your organisation's
    # account": via=upstream): the password page is not offered again.
    step = next_step(session, need.level, levels, local_password=auth.settings.enabled, has_totp=has_totp,
                     password_level=auth.password_level.name,
                     prefer_upstream=need.via not in (None, "", "local"))
    if step is None:
        return None
    path = {Step.PASSWORD: "/oauth2/sign_in", Step.TOTP: "/oauth2/totp", Step.ENROL: "/oauth2/step_up"}[step]
    return redirect(query(path, rd=need.rd, level=need.level))


async def bootstrap(app: web.Application) -> None:
    """The first administrator, when `local.bootstrap_admin` asks for one and there are no accounts."""
    ctx = app[CTX]
    auth = local_auth(app)
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
    ctx.audit.emit("account_created", user=user, reason="bootstrap")



async def password_grant(request: web.Request, username: str, password: str, code: str | None) -> Grant:
    """A password (and a TOTP code when the account has one) for the admin API's
    token exchange, checked as the sign-in form checks it (regulation counted per
    client as the pages see it: X-Forwarded-For believed only from a trusted
    proxy, so one client's failures do not ban everyone behind the same proxy)."""
    ctx = request.app[CTX]
    auth = local_auth(request)
    if not auth.settings.enabled:
        fail(400, "unsupported_grant_type", "password sign-in is off (local.enabled)")
    now = time.time()
    client = ctx.client(request)
    emit = ctx.audit.emit
    attempting(request, lambda why: emit("signin_refused", client=client, reason=f"token exchange: {why}"))
    attempt = await auth.check_password(username.strip().lower(), password, client, now)
    if not attempt.ok or attempt.account is None:
        # An unknown username is not written down: it may be a password typed in the wrong box.
        known = attempt.account.username if attempt.account is not None else None
        emit("signin_failed" if attempt.reason != "banned" else "signin_refused", user=known, client=client,
             reason=f"token exchange: {attempt.reason}")
        if attempt.reason == "banned":
            fail(429, "slow_down", "too many failed attempts; try again later",
                 **{"Retry-After": str(int(attempt.retry_after) + 1)})
        fail(401, "invalid_grant", "wrong username or password")
    acct = attempt.account
    level = auth.password_level.name
    if acct.has_totp:
        if code is None:
            fail(401, "invalid_grant", "this account needs a TOTP code (field totp)")
        t = await auth.check_totp(acct.username, code, client, now)
        if not t.ok:
            emit("totp_failed", user=acct.username, client=client, reason=f"token exchange: {t.reason}")
            fail(401, "invalid_grant", "wrong or reused TOTP code")
        lv = auth.totp_level_for(ctx.runtime.config.levels.items[-1].name)
        if lv is not None:
            level = lv.name
    emit("signin_ok", user=acct.username, client=client, level=level, reason="token exchange (password)")
    return Grant(acct.username, level, acct.groups, acct.email)


def build(app: web.Application, ctx: AppContext) -> Contribution:
    app[SIGNIN] = SigninState()
    return Contribution(
        routes=(
            Route("GET", "/oauth2/sign_in", password.sign_in_get),
            Route("POST", "/oauth2/sign_in", password.sign_in_post),
            Route("GET", "/oauth2/totp", totp_pages.totp_get),
            Route("POST", "/oauth2/totp", totp_pages.totp_post),
            Route("GET", "/oauth2/step_up", totp_pages.step_up_get),
            Route("GET", "/oauth2/totp/enroll", totp_pages.enroll_get),
            Route("POST", "/oauth2/totp/enroll", totp_pages.enroll_post),
            Route("GET", "/", password.home),
        ),
        factors=(Factor("local", start=authenticate),),
        startup=(lambda: bootstrap(app),),
        password_grant=password_grant,
    )
