"""Connections: how many, how long idle, how long a request head may take, what a bad head gets.

aiohttp alone keeps an idle connection for 3630 s, waits for an unfinished
request head as long, accepts connections until the process runs out of
descriptors, answers a header over 8190 bytes with a 400 whose body quotes
the first 100 bytes of it, and logs that with a traceback (a cookie, at
error level, on every such request). Here, with the `limits:` section
(core/limits.py says what each limit does):

- `LimitedRunner` is the AppRunner `forwardauth serve` uses: aiohttp's own
  limits (keep-alive, header line size, header count) from the config, and
  the server and request handler below.
- `LimitedServer` counts connections; over `max_connections` it closes the
  connections that have waited longest for a request (a request being
  answered, e.g. a long-poll, is never cut), or, with none waiting, answers
  the new connection 503 and closes it.
- `LimitedHandler` closes a connection whose request head does not arrive
  whole within `header_timeout` (408 when part of it came), answers a head
  over the limits 431/414 and any other unreadable head 400, each with a
  fixed text and a log line that holds no request bytes (at most ten a
  second), and logs handler errors with their traceback's frames but
  without exception messages (which may quote request data).

Events are counted in forwardauth_connections_closed_total{reason} and
forwardauth_bad_requests_total{reason}.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
import sys
import traceback
from typing import Any

import aiohttp.web_response
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

from forwardauth.core.limits import Limits
from forwardauth.core.logs import Throttle

log = logging.getLogger("forwardauth")

SERVER_HEADER = "forwardauth"
RESERVED_DESCRIPTORS = 256  # for the state store, the audit log, the provider, logs: never given to clients

CLOSED = Counter("forwardauth_connections_closed", "Connections closed by a limit, by reason.", ["reason"])
BAD_REQUESTS = Counter("forwardauth_bad_requests", "Request heads refused before any handler ran, by reason.",
                       ["reason"])
for _r in ("header_timeout", "idle_for_room", "over_limit"):
    CLOSED.labels(_r)
for _r in ("header_too_large", "too_many_headers", "uri_too_long", "malformed"):
    BAD_REQUESTS.labels(_r)

_HEAD_LOG = Throttle(per_interval=10, interval=1.0, name="refused_heads")
_ROOM_LOG = Throttle(per_interval=1, interval=10.0, name="connections_closed_for_room")
_REFUSED_LOG = Throttle(per_interval=1, interval=10.0, name="connections_refused")
_TIMEOUT_LOG = Throttle(per_interval=1, interval=10.0, name="header_timeouts")


def hide_version() -> None:
    """`Server: forwardauth` on every answer instead of aiohttp's `Python/3.x aiohttp/3.y.z`.

    aiohttp fills the header from this module global when a response has
    none; replacing the global costs nothing per answer."""
    aiohttp.web_response.SERVER_SOFTWARE = SERVER_HEADER


def _raw_answer(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nServer: {SERVER_HEADER}\r\nConnection: close\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


HEAD_TIMEOUT_ANSWER = _raw_answer("408 Request Timeout", "The request head did not arrive in time.\n")
BUSY_ANSWER = _raw_answer("503 Service Unavailable", "Too many connections; try again.\n", "Retry-After: 1\r\n")

# (status, text, counter reason, log reason) of a refused head
_TOO_LARGE = (431, "Request header fields too large.\n", "header_too_large", "a header line is too long")
_TOO_MANY = (431, "Request header fields too large.\n", "too_many_headers", "too many header fields")
_URI_TOO_LONG = (414, "URI too long.\n", "uri_too_long", "the request line is too long")
_MALFORMED = (400, "Bad request: the request could not be parsed.\n", "malformed", "the request could not be parsed")


def _refusal(exc: BaseException) -> tuple[int, str, str, str]:
    """What a head refused by aiohttp's parser gets. The exception's message is
    never used: it quotes the request's bytes (a cookie, a token)."""
    if isinstance(exc, LineTooLong):
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
        return _URI_TOO_LONG if any(f.name.endswith("cb_on_url") for f in frames) else _TOO_LARGE
    if isinstance(exc, HttpProcessingError) and exc.message == "Too many headers received":
        return _TOO_MANY
    return _MALFORMED


def frames_of(exc: BaseException | None, limit: int = 12) -> dict[str, Any]:
    """An exception as log fields without its message: the type of each
    exception in the chain and where it was raised (file:line function)."""
    if exc is None:
        return {}
    types, where = [], []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        types.append(type(e).__qualname__)
        e = e.__cause__ or e.__context__
    for f in traceback.extract_tb(exc.__traceback__)[-limit:]:
        where.append(f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno} {f.name}")
    return {"error": " <- ".join(types), "where": where}


class _After(enum.Enum):
    """What the bytes received after the last whole request are (LimitedHandler._next_head)."""

    NOTHING = "nothing, a body, or empty lines"
    HEAD = "part of a head"
    UNKNOWN = "unknown: aiohttp held bytes back unparsed"


class LimitedHandler(RequestHandler):
    """aiohttp's protocol, with the head timeout and quiet refusals.

    The head clock runs while part of a request head waits in aiohttp's parser: on a new
    connection from its start, on a kept-alive one from the first byte of the next head. That
    byte may come while the previous request is still being answered (even in the same packet,
    pipelined), so the clock is not tied to aiohttp waiting for a request; a head is late
    header_timeout after its first byte, or, when an answer was still pending then, at the
    first further header_timeout after that answer was sent. The clock must not run for body
    bytes (the body timeout's), nor on a connection idle after its answers: an unasked 408
    there would be read by a proxy (nginx's upstream keep-alive) as the answer to its next
    request.

    aiohttp does not say where in a packet a message ended, so `data_received` hands it the
    packet's last byte that is not CR or LF on its own (its parsers take any split): when that
    byte ends a message (its head, or its body), nothing follows it but empty lines, which are
    no head (RFC 9112 2.2); when it ends nothing and no body is arriving, a head has begun.
    While aiohttp holds bytes back unparsed (its queue of 32 pipelined requests full, a body
    over its buffer, bytes after an Upgrade request) where they end is unknown: a connection
    that then stays idle is closed after header_timeout, without a 408.
    """

    __slots__ = ("_header_timeout", "_head_timer", "_head_count", "_next_head", "_body", "refuse")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self._next_head = _After.NOTHING
        self._body: StreamReader | None = None  # the newest request's body while it is still arriving
        self.refuse = False  # set by LimitedServer: over the cap with every connection busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.refuse:
            # Closed here, after aiohttp has started its task (which then ends at once): closed
            # from within the manager's connection_made, the task would start after
            # connection_lost and fail its own assertion.
            transport.write(BUSY_ANSWER)  # type: ignore[attr-defined]
            self.force_close()
        elif not self._force_close:  # the first head's clock starts now
            self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is not None or self._close or self._force_close:
            super().data_received(data)  # an accepted upgrade (WebSocket), or closing: no more heads
            return
        count = self._request_count
        if data.endswith(b"\r\n\r\n"):
            # Most packets (every proxy subrequest): no split needed. A head is complete once an empty
            # line ends it, so what ends in CRLF CRLF is a whole head, a body or empty lines: whatever
            # message ended, nothing of a next head is left (end = 0: nothing learnt of one).
            ended, end = self._feed(data), 0
        else:
            end = len(data.rstrip(b"\r\n"))  # just past the last byte that is not CR or LF
            if end > 1:
                self._feed(data[:end - 1])
                data = data[end - 1:]
            ended = self._feed(data)
        if self._reading_paused or self._buffer_paused or self._message_tail \
                or (not data and self._next_head is _After.UNKNOWN and self._body is None):
            # aiohttp holds bytes back unparsed, or (b"", its call to resume) has parsed bytes it held:
            # where they end is unknown. (With none held, b"" parses nothing and changes nothing.)
            self._next_head = _After.UNKNOWN
        elif ended or self._body is not None:
            self._next_head = _After.NOTHING  # the bytes ended a message or a body, or a body is arriving
        elif end:
            self._next_head = _After.HEAD  # a byte after the last whole message and its body: a head began
        # (else only CR/LF that ended nothing: a head goes on, or none began)
        if self._request_count != count and self._head_timer is not None:  # a head arrived whole
            self._head_timer.cancel()
            self._head_timer = None
        if self._next_head is not _After.NOTHING and self._head_timer is None:
            self._start_head_clock()

    def _feed(self, part: bytes) -> bool:
        """`part` to aiohttp; whether a message (its head without a body, or its body) ended in it."""
        count, body = self._request_count, self._body
        super().data_received(part)
        if self._request_count != count:
            payload = self._messages[-1][1]
            self._body = None if payload.is_eof() else payload
            return True
        if body is not None and body.is_eof():
            self._body = None
            return True
        return False

    def _start_head_clock(self) -> None:
        self._head_count = self._request_count
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._request_count != self._head_count or self._force_close or transport is None:
            return  # the head came whole, or the connection is closing
        if self._request_in_progress or self._messages:
            # A request is still answered: a head is not late while an answer is pending. Asked again
            # one header_timeout on (rather than hooking every answer's end: this is the rare case).
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)
            return
        if self._request_count and self._next_head is _After.NOTHING:
            return  # what seemed unknown was a body
        partial = self._next_head is _After.HEAD
        if partial:
            transport.write(HEAD_TIMEOUT_ANSWER)
        CLOSED.labels("header_timeout").inc()
        skipped = _TIMEOUT_LOG.allow()
        if skipped is not None:
            log.info("closed a connection: no complete request head in time",
                     extra={"fields": _fields(skipped, client=_peer(transport), header_timeout=self._header_timeout,
                                              partial=partial)})
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 400 and isinstance(exc, HttpProcessingError):
            status, text, reason, why = _refusal(exc)
            BAD_REQUESTS.labels(reason).inc()
            if not (self._request_count == 1 and isinstance(exc, BadHttpMethod)):  # TLS or a port scan: counted
                skipped = _HEAD_LOG.allow()
                if skipped is not None:
                    log.warning("request head refused", extra={"fields": _fields(
                        skipped, status=status, reason=why, client=request.remote)})
        else:
            self.log_exception("Error handling request", exc_info=exc)
            text = f"{status} {_PHRASES.get(status, 'Error')}\n"
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was partly sent already; the connection is closed")
        resp = web.Response(status=status, text=text)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's error lines, without the exception's message or traceback text (they may quote
        request data); the exception types and the frames say where to look."""
        exc = kw.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        msg = args[0] % args[1:] if len(args) > 1 else (args[0] if args else "error")
        log.error(str(msg), extra={"fields": frames_of(exc if isinstance(exc, BaseException) else None)})


_PHRASES = {500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _fields(skipped: int, **fields: Any) -> dict[str, Any]:
    """A log line's fields, with how many lines like it were left out before it (when any were)."""
    if skipped:
        fields["suppressed"] = skipped
    return fields


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class LimitedServer(web.Server):
    """aiohttp's connection manager, with a cap on open connections."""

    max_connections: int
    header_timeout: float
    live: int

    def configure(self, limits: Limits, max_connections: int) -> None:
        self.max_connections = max_connections
        self.header_timeout = limits.header_timeout
        self.live = 0

    def __call__(self) -> RequestHandler:
        return LimitedHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.live += 1
        if self.live > self.max_connections:
            self._make_room(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._connections:
            self.live -= 1
        super().connection_lost(handler, exc)

    def _make_room(self, new: RequestHandler) -> None:
        """Close the connections waiting for a request, those that never sent one first, then
        those idle longest (kept-alive connections of a proxy are the last to go); one in a
        hundred of the cap at once, so a flood of connections costs one scan per batch. With
        none waiting, `new` is refused."""
        waiting = [h for h in self._connections if h is not new and not h._force_close
                   and not h._request_in_progress and not h._messages]
        if waiting:
            waiting.sort(key=lambda h: (h._request_count > 0, h._next_keepalive_close_time))
            closed = waiting[:max(1, self.max_connections // 100)]
            for h in closed:
                h.force_close()
                if self._connections.pop(h, None) is not None:
                    self.live -= 1
            CLOSED.labels("idle_for_room").inc(len(closed))
            skipped = _ROOM_LOG.allow()
            if skipped is not None:
                log.warning("connection limit reached: closed the connections waiting longest for a request",
                            extra={"fields": _fields(skipped, max_connections=self.max_connections,
                                                     closed=len(closed))})
        else:
            assert isinstance(new, LimitedHandler)
            new.refuse = True
            CLOSED.labels("over_limit").inc()
            skipped = _REFUSED_LOG.allow()
            if skipped is not None:
                log.warning("connection limit reached: refused a connection, every connection is busy with a "
                            "request", extra={"fields": _fields(skipped, max_connections=self.max_connections)})


def connection_budget(limits: Limits) -> int:
    """`limits.max_connections`, or fewer when the descriptor limit cannot hold it.

    The soft RLIMIT_NOFILE is raised toward the hard one first (as Go's
    runtime and nginx's worker_rlimit_nofile do); what stays short lowers the
    cap, with a warning, so that clients can never take the descriptors the
    state store, the audit log or the provider need."""
    want = limits.max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return limits.max_connections
    budget = max(16, soft - RESERVED_DESCRIPTORS)
    log.warning("limits.max_connections lowered: the descriptor limit cannot hold it",
                extra={"fields": {"max_connections": limits.max_connections, "lowered_to": budget,
                                  "nofile": soft, "hint": "raise it (LimitNOFILE=, ulimit -n)"}})
    return budget


class LimitedRunner(web.AppRunner):
    """The AppRunner of `forwardauth serve`: aiohttp's limits from the config,
    LimitedServer and LimitedHandler for the rest."""

    def __init__(self, app: web.Application, limits: Limits, **kw: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, max_line_size=limits.header_bytes,
                         max_field_size=limits.header_bytes, max_headers=limits.headers, **kw)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside Application._make_handler; the
        # subclass adds behaviour only (no state of its own until configure).
        server.__class__ = LimitedServer
        assert isinstance(server, LimitedServer)
        server.configure(self.limits, connection_budget(self.limits))
        return server
