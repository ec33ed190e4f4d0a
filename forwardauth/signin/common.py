"""What every page of local sign-in shares: its state, the request's facts,
the audit line, the messages people see, and the rules a step-up obeys.

The pages themselves are `password` (/oauth2/sign_in and /) and
`totp_pages` (/oauth2/totp, /oauth2/step_up, /oauth2/totp/enroll); `web`
wires them into the app. Handlers translate only: read and bound the form,
check the CSRF token, ask `service.LocalAuth`, write one audit line, render
the answer. Every refusal has one exact status and message (see the
tests); an unknown user and a wrong password get the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from forwardauth.core.redirects import safe_redirect
from forwardauth.core.runtime import Runtime
from forwardauth.core.session import Session
from forwardauth.signin.flow import can_step_up
from forwardauth.signin.service import Attempt, LocalAuth
from forwardauth.signin.settings import settings
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.facts import Facts
from forwardauth.web.forms import form_page, query, redirect
from forwardauth.web.oauth2_start import START_PATH, need_for, satisfied

MAX_USERNAME = 128
MAX_PASSWORD = 1024

MSG_WRONG = "Wrong username or password."
MSG_LOCKED = "This account is locked. Ask an administrator to unlock it."
MSG_CSRF = "This form has expired or was not sent from this site. Please try again."
MSG_TOO_LONG = "The username or password is too long."
MSG_EMPTY = "Enter your username and password."
MSG_CODE_FORMAT = "Enter the 6-digit code from your authenticator app."
MSG_CODE_WRONG = "That code is not right. Check that your phone's clock is correct and try the next code."
MSG_CODE_REPLAYED = "That code has already been used. Wait for the next code (a new one appears every 30 seconds)."
MSG_SESSION_ENDED = "Your session has ended. Please sign in again."
MSG_LEVEL_FIRST = "Sign in with your password first, then come back to this step."
MSG_NO_TOTP_LEVEL = "No level here is proven with a one-time code."
MSG_SECRET_UNREADABLE = ("Your authenticator app cannot be checked here any more: this server no longer holds the "
                         "key it was set up with. Ask an administrator to reset it, then set it up again.")
MSG_ENROL_BUSY = ("An authenticator app is being set up for this account in another window. "
                  "Finish it there, or start again here in a minute.")


def banned_message(minutes: int) -> str:
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."



# --- per-app state -------------------------------------------------------------


@dataclass
class SigninState:
    """The LocalAuth of the current runtime (rebuilt after a reload)."""

    runtime: Runtime | None = None
    auth: LocalAuth | None = None


SIGNIN = web.AppKey("signin", SigninState)


def local_auth(request: web.Request | web.Application) -> LocalAuth:
    """The LocalAuth of the current runtime (rebuilt after a reload)."""
    app = request if isinstance(request, web.Application) else request.app
    ctx = app[CTX]
    h = app[SIGNIN]
    if h.runtime is not ctx.runtime or h.auth is None:
        h.auth = LocalAuth(ctx.runtime, ctx.store)
        h.runtime = ctx.runtime
    return h.auth


# --- request facts -----------------------------------------------------------------




def safe_rd(ctx: AppContext, value: str | None) -> str:
    s = ctx.runtime.config.server
    return safe_redirect(value, s.public_url, s.allowed_redirect_domains)


def level_of(ctx: AppContext, value: str | None) -> str:
    return value if value and value in ctx.runtime.config.levels else ""


def message(request: web.Request, ctx: AppContext, status: int, title: str, text: str = "", *,
            error: str | None = None, link: tuple[str, str] | None = None, user: str | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    return form_page(request, ctx, "message.html", status, title=title, text=text, error=error, user=user,
                     link_url=link[0] if link else None, link_text=link[1] if link else "", headers=headers)


def next_url(ctx: AppContext, rd: str, level: str, session: Session, now: float) -> str:
    """rd when the new session is enough for it, else back to /oauth2/start for the next step."""
    need = need_for(ctx, rd, level or None, session)
    return rd if satisfied(ctx, need, now) else query(START_PATH, rd=rd, level=need.level)


def reason_of(attempt: Attempt) -> str:
    return f"{attempt.reason}; ban started" if attempt.ban_started else attempt.reason


def minutes(attempt: Attempt) -> int:
    return max(1, math.ceil(attempt.retry_after / 60))


def need_session(request: web.Request, ctx: AppContext, f: Facts, rd: str, level: str) -> web.Response | None:
    """Pages below need a session: without one, go (back) through /oauth2/start."""
    if f.session is None:
        return redirect(query(START_PATH, rd=rd, level=level))
    return None


def password_level(ctx: AppContext) -> str:
    return settings(ctx.runtime.config).password_level_of(ctx.runtime.config.levels).name


def may_step_up(ctx: AppContext, session: Session, level: str) -> bool:
    """A local factor may raise `session` to `level` only from the level just
    below it, and never from below the password level (see flow.can_step_up)."""
    return can_step_up(session.level, level, ctx.runtime.config.levels, password_level(ctx))

