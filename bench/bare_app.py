"""The baseline for the benchmark: an aiohttp + uvloop handler that answers 200.

It does what forwardauth's server does minus the decision (same framework,
same loop, one process, no access log), so nginx -> bare_app measures the
cost of the proxy hop and the framework, and the ratio forwardauth/bare_app
shows what the decision itself costs.

The answer has an empty body by default: nginx discards the body of an
auth_request answer without reading it, so an answer WITH a body makes nginx
close the upstream connection after every check (--body to see the effect).

    python bench/bare_app.py --listen 127.0.0.1:4181 [--body 'OK\n']
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

BODY = ""


async def allow(request: web.Request) -> web.Response:
    return web.Response(text=BODY)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4181", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--body", default="", help="answer body (default: empty)")
    args = parser.parse_args(argv)
    global BODY
    BODY = args.body.encode().decode("unicode_escape")
    host, _, port = args.listen.rpartition(":")
    app = web.Application()
    app.router.add_get("/{tail:.*}", allow)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None, backlog=1024,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
