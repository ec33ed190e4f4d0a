"""Every HTML page forwardauth serves, rendered one way, under one set of headers.

Jinja2 templates (forwardauth/templates, package data) with autoescaping; they
use only the stylesheet served here under /oauth2/static: no JavaScript and
no inline style, so the one Content-Security-Policy below forbids both. The
sign-in part's pages, the upstream sign-in's notices and /oauth2/start's
"no way to sign in" all go through `render`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STYLESHEET_PATH = "/oauth2/static/forwardauth.css"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("forwardauth", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Every variable a template may use, with its default, so a page never fails
# on a missing one (StrictUndefined catches typos in templates instead).
_DEFAULTS: dict[str, Any] = {
    "realm": "forwardauth",
    "error": None,
    "info": None,
    "user": None,
    "csrf": "",
    "rd": "",
    "level": "",
    "username": "",
    "target_host": None,
    "offers": (),  # other ways to sign in or step up (web.oauth2_start.Offer), from the parts
    "reason": "",
    "issuer": "",
    "text": "",
    "link_url": None,
    "link_text": "",
    "source": "local",  # where the session came from: "local" (a password) or an upstream provider
}


def render(template: str, status: int = 200, *, headers: dict[str, str] | None = None, **values: Any) -> web.Response:
    html = _ENV.get_template(template).render(**{**_DEFAULTS, **values})
    resp = web.Response(status=status, text=html, content_type="text/html", charset="utf-8")
    for k, v in SECURITY_HEADERS.items():
        resp.headers[k] = v
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def page(status: int, title: str, message: str, link: tuple[str, str] | None = None, *,
         realm: str = "forwardauth") -> web.Response:
    """A short notice (errors of the sign-in flow): a title, one paragraph, maybe a link."""
    return render("notice.html", status, title=title, text=message, realm=realm,
                  link_url=link[0] if link else None, link_text=link[1] if link else "")


def continue_to(url: str) -> web.Response:
    """A page that moves on to `url` by itself (meta refresh; no script)."""
    return render("continue.html", 200, url=url)


def group_secret(secret: str) -> str:
    """"JBSW Y3DP ..." : a base32 seed in groups of four, easier to type."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(
        body=(STATIC_DIR / "forwardauth.css").read_bytes(),
        content_type="text/css",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
