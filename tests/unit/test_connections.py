"""web/connections.py in process: a handler's exception is logged by its types and frames, never its
message (which may quote request data); the answer is a fixed 500."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from forwardauth.core.limits import Limits
from forwardauth.core.logs import JsonFormatter
from forwardauth.web.connections import LimitedRunner, frames_of, hide_version


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_a_handler_error_is_logged_without_its_message():
    async def boom(request: web.Request) -> web.Response:
        raise ValueError(f"bad cookie {request.headers['Cookie']}")

    app = web.Application()
    app.router.add_get("/x", boom)
    hide_version()
    runner = LimitedRunner(app, Limits(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    lines = Lines()
    logging.getLogger().addHandler(lines)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: fa=S3CRET\r\n\r\n")
        out = await asyncio.wait_for(r.read(), 5)
        w.close()
    finally:
        logging.getLogger().removeHandler(lines)
        await runner.cleanup()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert out.endswith(b"\r\n\r\n500 Internal Server Error\n")
    assert b"Server: forwardauth\r\n" in out
    text = json.dumps(lines.lines)
    assert "S3CRET" not in text
    (line,) = [x for x in lines.lines if x["msg"] == "Error handling request"]
    assert line["level"] == "error" and line["error"] == "ValueError" and "exc" not in line
    assert any(w.endswith(" boom") and "test_connections.py" in w for w in line["where"])


def test_frames_of_names_the_chain_without_messages():
    try:
        try:
            raise KeyError("token fa1_secret")
        except KeyError as inner:
            raise RuntimeError("cookie value") from inner
    except RuntimeError as exc:
        got = frames_of(exc)
    assert got["error"] == "RuntimeError <- KeyError"
    assert "secret" not in json.dumps(got) and "cookie value" not in json.dumps(got)
