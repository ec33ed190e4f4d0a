"""A tiny upstream app that answers every request with what it received, as JSON.

It stands in for "the app behind the proxy" in the examples and the tests:
whatever identity headers the proxy passed on (and nothing else) show up in
the answer, so a test can check exactly what an app would have believed.

    python examples/echo_app.py --listen 127.0.0.1:8081

Answer: {"method": "GET", "path": "/x", "query": "a=1",
         "headers": [["Host", "app.example.com"], ["X-Auth-Request-User", "alice"], ...]}
Headers are a list of [name, value] pairs in arrival order, so a header that
arrives twice is visible as two entries.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT to listen on (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    web.run_app(make_app(), host=host.strip("[]") or "127.0.0.1", port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
