"""Three ordinary apps that route paths the way real frameworks do, for the path tests.

Each serves the same route table and answers every request with JSON saying
which route it took, so a test can tell exactly what the app did with a
request target, whatever the proxy in front passed on:

    {"app": "aiohttp", "route": "admin", "path": "...", "user": "...", "headers": [[name, value], ...]}

Routes (what the security tests consider each route to need), each also at
its bare name (`/admin`), as forwardauth's prefix rule `/admin/` covers it:
    /public/...   public    anonymous
    /admin/...    admin     level mfa
    /blocked/...  blocked   never (a deny rule)
    /app/...      app       level password (and the only route a token limited to /app/ may reach)
    anything else other     level password

The apps:
- aiohttp: a route table (`/admin/{tail:.*}`, ...), resolved by aiohttp's own
  router on `rel_url.path_safe` (percent-decoded except `%2F`/`%25`; dot
  segments NOT resolved, `#...` split off by its parser);
- flask: a Flask app on Werkzeug's server, which percent-decodes the whole
  path (`%2F` too) into PATH_INFO and routes that, dot segments left as
  they are (`/admin/../public/x` is the admin route with tail `../public/x`);
- cleaner: a file-server-like app that behaves like Go's http.FileServer:
  the request target up to `?` (`#` is an ordinary character there),
  percent-decoded, then cleaned as Go's path.Clean does (`..` resolved,
  `.` and repeated slashes dropped), and routed on the result.
  `fold_case=True` also lower-cases it (a case-insensitive file system or
  router, as Express and ASP.NET route by default).

`route_of(kind, raw_target)` gives the route each app takes for a raw request
target, in-process, through the same code the servers run (the Hypothesis
tests use it, and test_apps checks it against the running servers).

Run one: python tests/harness/apps.py KIND --port N
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("aiohttp", "flask", "cleaner")
ROUTES = ("public", "admin", "blocked", "app")
IDENTITY = "X-Auth-Request-User"


def _answer(app: str, route: str, path: str, raw: str, headers: list[tuple[str, str]]) -> bytes:
    user = next((v for k, v in headers if k.lower() == IDENTITY.lower()), None)
    return json.dumps({"app": app, "route": route, "path": path, "raw": raw, "user": user,
                       "headers": [[k, v] for k, v in headers]}).encode()


# --- aiohttp ---------------------------------------------------------------------------------------

def aiohttp_app():
    from aiohttp import web

    def handler(route: str) -> Callable:
        async def handle(request: web.Request) -> web.Response:
            body = _answer("aiohttp", route, request.path, request.raw_path, list(request.headers.items()))
            return web.Response(body=body, content_type="application/json")
        return handle

    async def websocket(request: web.Request) -> web.StreamResponse:
        """A WebSocket that says who it is for, then closes (the proxies must still upgrade)."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"user={request.headers.get(IDENTITY, '')}")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/public/ws", websocket)
    app.router.add_get("/app/ws", websocket)
    for route in ROUTES:
        app.router.add_route("*", f"/{route}", handler(route))
        app.router.add_route("*", f"/{route}/{{tail:.*}}", handler(route))
    app.router.add_route("*", "/{tail:.*}", handler("other"))
    return app


_AIOHTTP_APP = None


def aiohttp_route(raw_target: str) -> str:
    """The route aiohttp's router picks for `raw_target`, with the URL built as its
    HTTP parser builds it (http_parser.py: split `#`, then `?`, URL.build(encoded=True))."""
    global _AIOHTTP_APP
    from aiohttp.test_utils import make_mocked_request
    from yarl import URL

    if _AIOHTTP_APP is None:
        _AIOHTTP_APP = aiohttp_app()
    path, _, fragment = raw_target.partition("#")
    path, _, query = path.partition("?")
    try:
        url = URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
    except ValueError:
        return "refused"
    req = make_mocked_request("GET", "/", app=_AIOHTTP_APP).clone(rel_url=url)
    # The router's resolve() never really waits: run the coroutine to its end by hand.
    coro = _AIOHTTP_APP.router.resolve(req)
    try:
        coro.send(None)
    except StopIteration as done:
        info = done.value
    else:  # pragma: no cover - would mean aiohttp's router started doing I/O
        coro.close()
        raise RuntimeError("aiohttp's router suspended")
    if info.http_exception is not None:
        return "refused"
    canonical = info.route.resource.canonical.split("/")[1]
    return canonical if canonical in ROUTES else "other"


# --- Flask / Werkzeug ------------------------------------------------------------------------------

def flask_app():
    from flask import Flask, request

    app = Flask("paths")

    def view(route: str) -> Callable:
        def serve(tail: str = "") -> Any:
            body = _answer("flask", route, request.path, request.environ.get("RAW_URI") or request.full_path,
                           list(request.headers.items()))
            return app.response_class(body, mimetype="application/json")
        serve.__name__ = f"serve_{route}"
        return serve

    for route in ROUTES:
        serve = view(route)
        for rule in (f"/{route}", f"/{route}/", f"/{route}/<path:tail>"):
            app.add_url_rule(rule, view_func=serve, methods=["GET", "HEAD", "POST"])
    other = view("other")
    app.add_url_rule("/", view_func=other, methods=["GET", "HEAD", "POST"])
    app.add_url_rule("/<path:tail>", view_func=other, methods=["GET", "HEAD", "POST"])
    return app


_FLASK_ADAPTER = None


def http_server_target(raw_target: str) -> str:
    """The target as Python's http.server hands it on (Werkzeug's server and the
    cleaner both use it): a leading run of slashes becomes one (gh-87389)."""
    return "/" + raw_target.lstrip("/") if raw_target.startswith("//") else raw_target


def werkzeug_path_info(raw_target: str) -> str:
    """PATH_INFO as Werkzeug's development server makes it (serving.py make_environ):
    urlsplit the target (`#` starts a fragment), a `//x` netloc put back, unquote
    (every escape, `%2F` too; bad UTF-8 replaced)."""
    from urllib.parse import unquote, urlsplit

    url = urlsplit(http_server_target(raw_target))
    path = f"/{url.netloc}{url.path}" if not url.scheme and url.netloc else url.path
    return unquote(path)


def flask_route(raw_target: str) -> str:
    """The route Werkzeug's URL map picks for PATH_INFO (a redirect, e.g. merged
    slashes or a missing trailing slash, serves no route: "redirect")."""
    global _FLASK_ADAPTER
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import RequestRedirect

    if _FLASK_ADAPTER is None:
        _FLASK_ADAPTER = flask_app().url_map.bind("app.test")
    try:
        endpoint, _ = _FLASK_ADAPTER.match(werkzeug_path_info(raw_target), method="GET")
    except RequestRedirect:
        return "redirect"
    except HTTPException:
        return "refused"
    return endpoint.removeprefix("serve_")


# --- the cleaning file server ----------------------------------------------------------------------

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def go_unescape(path: str) -> bytes | None:
    """Go's url.PathUnescape: every %XX decoded (including %2F); a bad escape is an error (None)."""
    out = bytearray()
    i = 0
    raw = path.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            h = raw[i + 1:i + 3]
            if len(h) < 2 or not all(chr(x) in "0123456789abcdefABCDEF" for x in h):
                return None
            out.append(int(h, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def go_clean(path: str) -> str:
    """Go's path.Clean for a rooted path: slashes folded, `.` dropped, `..` resolved
    (never above the root); "" becomes "/". No trailing slash, as in Go."""
    cleaned = posixpath.normpath("/" + path)
    return "/" + cleaned.lstrip("/")  # normpath keeps a leading "//"


def cleaner_path(raw_target: str, fold_case: bool = False) -> str | None:
    path = http_server_target(raw_target).split("?", 1)[0]
    decoded = go_unescape(path)
    if decoded is None:
        return None
    text = go_clean(decoded.decode("utf-8", "surrogateescape"))
    return text.lower() if fold_case else text


def cleaner_route(raw_target: str, fold_case: bool = False) -> str:
    path = cleaner_path(raw_target, fold_case)
    if path is None:
        return "refused"
    for route in ROUTES:
        if path == f"/{route}" or path.startswith(f"/{route}/"):
            return route
    return "other"


def cleaner_server(port: int, fold_case: bool = False) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def do_GET(self) -> None:
            route = cleaner_route(self.path, fold_case)
            if route == "refused":
                body, status = b"400 bad escape\n", 400
            else:
                name = "cleaner-folding" if fold_case else "cleaner"
                body, status = _answer(name, route, cleaner_path(self.path, fold_case) or "", self.path,
                                       list(self.headers.items())), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def route_of(kind: str, raw_target: str) -> str:
    """The route app `kind` takes for `raw_target` ("refused": the app answers an error)."""
    if kind == "aiohttp":
        return aiohttp_route(raw_target)
    if kind == "flask":
        return flask_route(raw_target)
    if kind == "cleaner":
        return cleaner_route(raw_target)
    if kind == "cleaner-folding":
        return cleaner_route(raw_target, fold_case=True)
    raise ValueError(kind)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one of the path-test apps")
    parser.add_argument("kind", choices=(*KINDS, "cleaner-folding"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.kind == "aiohttp":
        from aiohttp import web

        web.run_app(aiohttp_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
    elif args.kind == "flask":
        from werkzeug.serving import WSGIRequestHandler, make_server

        WSGIRequestHandler.log_request = lambda *a, **k: None  # type: ignore[method-assign]
        make_server("127.0.0.1", args.port, flask_app(), threaded=True).serve_forever()
    else:
        server = cleaner_server(args.port, fold_case=args.kind == "cleaner-folding")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
