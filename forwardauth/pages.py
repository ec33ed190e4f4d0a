"""A minimal self-contained HTML page for errors and notices of the sign-in flow.

Every dynamic part is escaped; the page loads nothing and cannot be framed.
"""

from __future__ import annotations

import html

from aiohttp import web

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def page(status: int, title: str, message: str, link: tuple[str, str] | None = None) -> web.Response:
    more = f'<p><a href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>' if link else ""
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;"
        "color:#1d2330}h1{font-size:1.4rem}p{line-height:1.5}</style></head><body>"
        f"<main><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{more}</main></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=HEADERS)
