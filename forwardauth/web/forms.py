"""HTML forms, shared by every part's pages: strict reading, CSRF, one way to answer.

`read_form` reads a urlencoded body strictly (bounded, UTF-8, each field
once) and raises `FormError` with the status and the message to show.
`form_page` renders a page (web.pages) whose form carries a CSRF token
(web.csrf), setting the nonce cookie when the browser has none yet;
`csrf_ok` checks a posted token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from forwardauth.web import csrf
from forwardauth.web.bodies import BodyError, read_body
from forwardauth.web.context import AppContext
from forwardauth.web.pages import render

MAX_FIELD = 4096  # rd, csrf, pending, level: generous, still bounded

MSG_MALFORMED = "The form could not be read. Please try again."
MSG_TOO_LARGE = "The form is too large."
MSG_TOO_SLOW = "The form did not arrive in time. Please try again."


class FormError(Exception):
    def __init__(self, status: int, message: str, reason: str):
        super().__init__(reason)
        self.status, self.message, self.reason = status, message, reason


async def read_form(request: web.Request, required: tuple[str, ...], max_bytes: int) -> dict[str, str]:
    """A urlencoded form, strictly: bounded size and time (web.bodies), UTF-8, each field once.
    Raises FormError."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise FormError(400, MSG_MALFORMED, "malformed_form")
    try:
        body = await read_body(request, max_bytes)
    except BodyError as exc:
        if exc.status == 413:
            raise FormError(413, MSG_TOO_LARGE, "oversized_form") from None
        if exc.status == 408:
            raise FormError(408, MSG_TOO_SLOW, "slow_form") from None
        raise FormError(400, MSG_MALFORMED, "malformed_form") from None
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


def redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def query(path: str, **params: str) -> str:
    """`path?a=b&...` with the empty parameters left out."""
    return f"{path}?{urlencode({k: v for k, v in params.items() if v})}"


def _nonce(request: web.Request, ctx: AppContext) -> tuple[str, str | None]:
    """The browser's CSRF nonce, or a new one with the Set-Cookie that stores it."""
    cfg = ctx.runtime.config.session
    value = request.cookies.get(csrf.cookie_name(cfg.cookie_name, cfg.secure))
    if value is not None and csrf.valid_nonce(value):
        return value, None
    n = csrf.new_nonce()
    return n, csrf.nonce_cookie(cfg, n)


def csrf_ok(request: web.Request, ctx: AppContext, token: str | None, form: str, binding: str = "") -> bool:
    """Is `token` the CSRF token of `form` (bound to `binding`: the session id, for forms used signed in)?"""
    cfg = ctx.runtime.config.session
    name = csrf.cookie_name(cfg.cookie_name, cfg.secure)
    return csrf.Csrf(ctx.runtime.keyring).check(token, request.cookies.get(name), form, binding)


def form_page(request: web.Request, ctx: AppContext, template: str, status: int = 200, *, form: str | None = None,
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
