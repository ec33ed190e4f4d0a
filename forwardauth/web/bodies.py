"""Request bodies, read whole but bounded in size and time: one way for every POST route.

`StreamReader.read(n)` returns what has arrived so far, up to n bytes, not
n bytes: a body sent in two packets read with one `read(n)` is cut in half
(a valid JSON body then reads as invalid). `read_body` reads until the end
of the body, refusing it at once when it is (or announces itself as) over
`max_bytes`, and when it has not arrived whole within `limits.body_timeout`.
`read_json` adds the strict JSON reading (core/jsonstrict.py: bounded
nesting, no duplicate keys). Every refusal is a `BodyError` with the status
and a description safe to show; each part maps it to its own answer shape
(web.forms to a page, web.api to the admin API's JSON error).

Parts with POST routes (sign-in forms, admin API, token exchange, devices,
passkeys) read bodies through these, never through `request.content`,
`request.read()`, `request.json()` or `request.post()` directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestPayloadError

from forwardauth.core import jsonstrict
from forwardauth.core.limits import Limits
from forwardauth.web.context import CTX

MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 16  # the admin API's bodies nest two levels deep


class BodyError(Exception):
    """A body refused: `status` (400, 408, 413) and a description that quotes nothing of it."""

    def __init__(self, status: int, description: str):
        super().__init__(description)
        self.status, self.description = status, description


def body_timeout(request: web.Request) -> float:
    """`limits.body_timeout` of the running config (the default outside forwardauth's app)."""
    ctx = request.app.get(CTX)
    return ctx.runtime.config.limits.body_timeout if ctx is not None else Limits().body_timeout


async def read_body(request: web.Request, max_bytes: int, timeout: float | None = None) -> bytes:
    """The whole body, at most `max_bytes`, arrived within `timeout` (default: limits.body_timeout)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyError(413, f"the body must be at most {max_bytes} bytes")
    try:
        async with asyncio.timeout(body_timeout(request) if timeout is None else timeout):
            return await read_stream(request.content, max_bytes)
    except TimeoutError:
        raise BodyError(408, "the body did not arrive in time") from None
    except RequestPayloadError:
        raise BodyError(400, "the body could not be read (bad chunked encoding or length)") from None


async def read_stream(stream: StreamReader, max_bytes: int) -> bytes:
    """A whole stream (a request's body, or a client response's), or BodyError 413 once over `max_bytes`.
    The caller bounds the time (a request: body_timeout; a client: its session's timeout)."""
    parts: list[bytes] = []
    size = 0
    while True:  # read(n) returns what has arrived: loop to the end, or past the limit
        chunk = await stream.read(max_bytes + 1 - size)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise BodyError(413, f"the body must be at most {max_bytes} bytes")


async def read_json(request: web.Request, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
                    timeout: float | None = None) -> Any:
    """The body as one unambiguous JSON value (any type: the caller checks its shape)."""
    raw = await read_body(request, max_bytes, timeout)
    try:
        return jsonstrict.loads(raw, max_depth)
    except jsonstrict.JsonError as exc:
        why = str(exc)
        raise BodyError(400, "the body is not valid JSON" if why == jsonstrict.NOT_JSON
                        else f"the body is not valid JSON ({why})") from None
