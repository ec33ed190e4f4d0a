"""Rendering the sign-in pages: Jinja2 templates with autoescaping, strict headers.

Templates live in forwardauth/templates (package data) and use only the
stylesheet under /oauth2/static: no JavaScript, no inline style, so the
Content-Security-Policy can forbid both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

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
    "upstream_url": None,
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
