"""Limits on every input, against a real `forwardauth serve` (SQLite state, tokens, local sign-in).

Each bad input gets its exact answer, and meanwhile the server keeps
answering others: `answers_others` makes a real decision (a bearer token,
200) while the bad input is in flight or right after it. The limits are set
low here (`LIMITS`) so that the timeouts take a second, not minutes; the
defaults are in config.example.yaml and core/limits.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from forwardauth.devices.credentials import new_credential
from forwardauth.state.records import Device
from forwardauth.state.sqlite import SQLiteStore
from harness.tokens import AUTH, TokenServer

LIMITS = {"header_timeout": "1s", "keepalive_timeout": "2s", "body_timeout": "1s", "denial_log_lines": 5}
# For the passkey routes' bodies (an https origin: the config refuses plain http, no browser comes here).
WEBAUTHN = {"rp_id": "auth.test", "origins": ["https://auth.test"], "level_user_verified": "mfa"}

DEVICES = {"level": "mfa", "poll_timeout": "3s", "limits": {"polls_per_user": 2}}


def paired_device(state_db: Path, user: str) -> str:
    """A device of `user` written straight into the server's state file: its credential."""
    async def add() -> str:
        store = SQLiteStore(str(state_db))
        try:
            c = new_credential()
            assert await store.add_device(Device(c.device_id, user, "phone", time.time(), c.secret_hash), 5)
            return c.token
        finally:
            await store.close()

    return asyncio.run(add())


@pytest.fixture(scope="module")
def fa(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits")
    server = TokenServer(workdir, extra={"limits": LIMITS, "webauthn": WEBAUTHN, "devices": DEVICES})
    server.account("root", roles="admin")
    server.account("bob")
    with server:
        server.admin = server.token("root", "--name", "admin")
        server.bob = server.token("bob", "--name", "bob")
        known(server)
        server.device = paired_device(workdir / "state.db", "bob")
        yield server


def known(server) -> None:
    """Wait until the server knows bob's token: tokens the CLI issues reach a running server with its
    next index refresh (a first decision sooner, on a loaded machine, got 401 "unknown or revoked")."""
    deadline = time.monotonic() + 10
    while server.decide("/api/x", token=server.bob).status != 200:
        assert time.monotonic() < deadline, "the server never learnt bob's token"
        time.sleep(0.05)


def answers_others(fa, within: float = 2.0) -> None:
    """A real decision (bearer token, allowed) is answered 200 within `within` seconds."""
    t = time.monotonic()
    r = fa.decide("/api/x", token=fa.bob)
    assert r.status == 200, r
    assert r.header("X-Auth-Request-User") == "bob"
    assert time.monotonic() - t < within


def raw(fa, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send `data` on a new connection; everything the server sends until it closes (or `wait` passes)."""
    s = socket.create_connection(("127.0.0.1", fa.port))
    s.settimeout(wait)
    t = time.monotonic()
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        out += b"<still open>"
    except ConnectionResetError:
        out += b"<reset>"
    finally:
        s.close()
    return out, time.monotonic() - t


def head(status_line: bytes, body: bytes) -> tuple[bytes, dict[str, str], bytes]:
    top, _, rest = body.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, _, v in (ln.partition(b": ") for ln in lines[1:])}
    return lines[0], headers, rest


def log_text(fa) -> str:
    return (fa.workdir / f"forwardauth-{fa.port}.log").read_text()


SECRET = b"S3CRETcookieVALUE"


# --- request heads ------------------------------------------------------------------------


@pytest.mark.parametrize("name, data, status_line, text", [
    ("header over header_bytes (a cookie)",
     b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\nCookie: forwardauth=" + SECRET * 600 + b"\r\n\r\n",
     b"HTTP/1.0 431 Request Header Fields Too Large", b"Request header fields too large.\n"),
    ("header name over header_bytes",
     b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\n" + SECRET * 600 + b": x\r\n\r\n",
     b"HTTP/1.0 431 Request Header Fields Too Large", b"Request header fields too large.\n"),
    ("more header fields than limits.headers",
     b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\n" + b"".join(b"X-%d: %s\r\n" % (i, SECRET) for i in range(200))
     + b"\r\n", b"HTTP/1.0 431 Request Header Fields Too Large", b"Request header fields too large.\n"),
    ("request line over header_bytes",
     b"GET /auth/nginx?" + SECRET * 600 + b" HTTP/1.1\r\nHost: auth.test\r\n\r\n",
     b"HTTP/1.0 414 Request-URI Too Long", b"URI too long.\n"),
    ("a control character in a header value",
     b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\nCookie: a=" + SECRET + b"\x01\r\n\r\n",
     b"HTTP/1.0 400 Bad Request", b"Bad request: the request could not be parsed.\n"),
    ("not HTTP at all", b"\x16\x03\x01" + SECRET + b"\r\n\r\n",
     b"HTTP/1.0 400 Bad Request", b"Bad request: the request could not be parsed.\n"),
])
def test_bad_heads_get_a_fixed_answer_and_no_byte_of_them_is_logged(fa, name, data, status_line, text):
    before = len(log_text(fa))
    out, took = raw(fa, data)
    first, headers, body = head(status_line, out)
    assert first == status_line, out[:300]
    assert body == text
    assert headers["server"] == "forwardauth"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert took < 2
    answers_others(fa)
    new = log_text(fa)[before:]
    assert "S3CRET" not in new and "Traceback" not in new
    assert '"level": "error"' not in new


def test_a_refused_head_is_one_warning_line_without_values(fa):
    before = len(log_text(fa))
    raw(fa, b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\nCookie: forwardauth=" + SECRET * 600 + b"\r\n\r\n")
    lines = [json.loads(x) for x in log_text(fa)[before:].splitlines() if x.strip()]
    refused = [x for x in lines if x["msg"] == "request head refused"]
    assert len(refused) == 1, lines
    assert {k: v for k, v in refused[0].items() if k != "time"} == {
        "level": "warning", "logger": "forwardauth", "msg": "request head refused", "status": 431,
        "reason": "a header line is too long", "client": "127.0.0.1"}


def test_a_header_just_under_the_limit_is_read(fa):
    # header_bytes (8190) counts the name and the value
    value = "x" * (8190 - len("X-Pad") - 10)
    r = fa.decide("/api/x", token=fa.bob, headers={"X-Pad": value})
    assert r.status == 200, r


def test_a_session_cookie_over_3800_bytes_is_not_opened(fa):
    time.sleep(1.1)  # a fresh second for the denial log lines (limits.denial_log_lines: 5 here)
    before = len(log_text(fa))
    r = fa.decide("/api/x", cookie="A" * 3801)
    assert (r.status, r.json()) == (401, {"error": "unauthorized", "error_description": "Sign-in required",
                                          "required_level": "password"})
    (line,) = [json.loads(x) for x in log_text(fa)[before:].splitlines() if '"msg": "decision"' in x]
    assert line["cookie"] == "oversized"  # its state, never its value
    assert "AAAAAAAAAAAAAAAA" not in log_text(fa)
    answers_others(fa)


def test_every_answer_says_server_forwardauth_without_versions(fa):
    for r in (fa.decide("/api/x", token=fa.bob), fa.decide("/api/x"), fa.api("GET", "/healthz"),
              fa.api("GET", "/api/v1/accounts"), fa.api("GET", "/oauth2/sign_in")):
        assert r.header("Server") == "forwardauth", r


# --- idle and unfinished connections ------------------------------------------------------


def test_an_unfinished_head_is_answered_408_and_closed_after_header_timeout(fa):
    out, took = raw(fa, b"GET /auth/nginx HTTP/1.1\r\nHost: auth.test\r\nX-Slow: ")
    assert out == (b"HTTP/1.1 408 Request Timeout\r\nServer: forwardauth\r\nConnection: close\r\n"
                   b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 41\r\n\r\n"
                   b"The request head did not arrive in time.\n")
    assert 0.9 < took < 2.5


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(fa):
    out, took = raw(fa, b"")
    assert out == b""
    assert 0.9 < took < 2.5


def test_a_kept_alive_connection_is_closed_after_keepalive_timeout(fa):
    conn = http.client.HTTPConnection("127.0.0.1", fa.port, timeout=10)
    conn.request("GET", "/healthz", headers={"Host": AUTH})
    assert conn.getresponse().read() == b"ok\n"
    sock = conn.sock
    t = time.monotonic()
    sock.settimeout(10)
    assert sock.recv(1) == b""  # closed by the server
    assert 1.8 < time.monotonic() - t < 4
    conn.close()


HEAD_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\nServer: forwardauth\r\nConnection: close\r\n"
                    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 41\r\n\r\n"
                    b"The request head did not arrive in time.\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: auth.test\r\n\r\n"
HEALTHZ_WITH_BODY = b"GET /healthz HTTP/1.1\r\nHost: auth.test\r\nContent-Length: 5\r\n\r\nhello"
NEXT_HEAD = b"GET /healthz HTTP/1.1\r\nHo"  # a second head, never finished


def kept_alive(fa, writes: list[bytes], pause: float = 0.0, wait: float = 6.0) -> tuple[bytes, float]:
    """`writes` on one kept-alive connection, `pause` seconds apart; everything the server sends
    until it closes, and how long after the last write it closed."""
    s = socket.create_connection(("127.0.0.1", fa.port))
    s.settimeout(wait)
    out = b""
    try:
        for n, data in enumerate(writes):
            if n:
                time.sleep(pause)
            s.sendall(data)
        t = time.monotonic()
        while chunk := s.recv(65536):
            out += chunk
        return out, time.monotonic() - t
    finally:
        s.close()


def answers(out: bytes) -> list[bytes]:
    """The status lines in `out`."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", out)


@pytest.mark.parametrize("writes, pause, n", [
    # the next head begins in the same write as a whole request: it is read while that is answered
    ([HEALTHZ + NEXT_HEAD], 0.0, 1),
    ([HEALTHZ_WITH_BODY + NEXT_HEAD], 0.0, 1),  # ... and right after its body
    ([HEALTHZ + HEALTHZ + NEXT_HEAD], 0.0, 2),  # ... behind two whole requests
    ([HEALTHZ, NEXT_HEAD], 0.3, 1),  # the next head begins on a connection idle after an answer
], ids=["pipelined", "after-a-body", "behind-two", "after-idle"])
def test_a_kept_alive_connection_gets_header_timeout_once_a_head_begins(fa, writes, pause, n):
    """Each whole request answered, then 408 and closed header_timeout (1 s) after the unfinished head
    began, not silently at keepalive_timeout (2 s here, 130 s by default)."""
    out, took = kept_alive(fa, writes, pause)
    assert answers(out) == [b"HTTP/1.1 200 OK"] * n + [b"HTTP/1.1 408 Request Timeout"], out
    assert out.count(b"ok\n") == n
    assert out.endswith(b"ok\n" + HEAD_TIMEOUT_408)
    assert 0.9 < took < 2.5


@pytest.mark.parametrize("data, n", [
    (HEALTHZ, 1),
    (HEALTHZ + HEALTHZ, 2),  # pipelined whole requests: each answered
    (HEALTHZ_WITH_BODY, 1),
    (HEALTHZ_WITH_BODY + b"\r\n", 1),  # an empty line after a message is no head (RFC 9112 2.2)
], ids=["one", "two-pipelined", "with-a-body", "body-and-crlf"])
def test_a_connection_idle_after_its_answers_gets_no_408(fa, data, n):
    """Whole requests in one write, then nothing: answered, then closed silently at keepalive_timeout
    (2 s here; an unasked 408 would be read by a proxy as the answer to its next request)."""
    out, took = kept_alive(fa, [data])
    assert answers(out) == [b"HTTP/1.1 200 OK"] * n, out
    assert out.endswith(b"ok\n") and out.count(b"ok\n") == n
    assert 1.8 < took < 4


@pytest.mark.parametrize("tail", [b"", NEXT_HEAD], ids=["idle", "unfinished-head"])
def test_over_32_pipelined_requests_then_no_whole_head_are_closed_after_header_timeout(fa, tail):
    """Past aiohttp's queue (32 requests) it holds the rest back unparsed, so whether a head began
    after the last whole request is not known: each request answered, then closed without 408
    header_timeout after the last answer (not at keepalive_timeout)."""
    s = socket.create_connection(("127.0.0.1", fa.port))
    s.settimeout(6)
    out = b""
    try:
        s.sendall(HEALTHZ * 40 + tail)
        while out.count(b"ok\n") < 40 and (chunk := s.recv(65536)):
            out += chunk
        t = time.monotonic()
        while chunk := s.recv(65536):
            out += chunk
        took = time.monotonic() - t
    finally:
        s.close()
    assert answers(out) == [b"HTTP/1.1 200 OK"] * 40, out[-300:]
    assert out.endswith(b"ok\n")
    assert 0.8 < took < 1.8  # header_timeout (1 s) after the last answer; keepalive_timeout is 2 s


def test_body_bytes_while_a_request_is_answered_start_no_head_clock(fa):
    """A body that trickles (its first bytes in the head's write, the rest 0.35 s apart, within
    body_timeout): the body timeout's, not the head clock's; the connection, idle after the answer
    for longer than header_timeout, gets no 408 and answers its next request."""
    s = socket.create_connection(("127.0.0.1", fa.port))
    s.settimeout(5)
    body = [b'{"code": "ABCD-', b'EFGH-JKLM-NPQR", ', b'"name": "x"}']
    head = (f"POST /api/v1/device/pair HTTP/1.1\r\nHost: {AUTH}\r\nContent-Type: {JSON}\r\n"
            f"Content-Length: {sum(map(len, body))}\r\n\r\n").encode()
    try:
        s.sendall(head + body[0])
        for part in body[1:]:
            time.sleep(0.35)
            s.sendall(part)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert (resp.status, json.loads(resp.read())["error"]) == (403, "invalid_code")
        s.settimeout(1.5)  # header_timeout + margin
        with pytest.raises(TimeoutError):
            s.recv(1)
        s.settimeout(5)
        s.sendall(HEALTHZ)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        s.close()


def test_slowloris_connections_are_closed_and_decisions_flow_meanwhile(fa):
    """200 connections each trickling a head byte by byte: all closed within about header_timeout of
    their first byte, while decisions keep being answered."""
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", fa.port))
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    closed: set[int] = set()
    i = 0
    while len(closed) < len(socks) and time.monotonic() - start < 8:
        for n, s in enumerate(socks):
            if n in closed:
                continue
            try:
                s.send(b"GET /auth/nginx HTTP/1.1\r\nX: "[i % 10:i % 10 + 1] if i < 10 else b"a")
                data = s.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed.add(n)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(n)
        answers_others(fa, within=1.0)
        i += 1
        time.sleep(0.2)
    for s in socks:
        s.close()
    assert len(closed) == 200
    assert time.monotonic() - start < 4


def test_timeouts_and_refusals_are_counted(fa):
    metrics = fa.api("GET", "/metrics").text
    assert re.search(r'^forwardauth_connections_closed_total\{reason="header_timeout"\} [1-9]', metrics, re.M)
    assert re.search(r'^forwardauth_bad_requests_total\{reason="header_too_large"\} [1-9]', metrics, re.M)
    assert re.search(r'^forwardauth_bad_requests_total\{reason="uri_too_long"\} [1-9]', metrics, re.M)


# --- bodies -------------------------------------------------------------------------------


def post(fa, path: str, body: bytes, content_type: str, token: str | None = None,
         chunks: list[bytes] | None = None, pause: float = 0.0, length: int | None = None) -> tuple[int, bytes]:
    """POST `body` (or `chunks`, `pause` seconds apart) with Content-Length `length` (default: its size)."""
    parts = chunks if chunks is not None else [body]
    size = sum(map(len, parts)) if length is None else length
    hdr = (f"POST {path} HTTP/1.1\r\nHost: {AUTH}:{fa.port}\r\nContent-Type: {content_type}\r\n"
           f"Content-Length: {size}\r\nConnection: close\r\n")
    if token:
        hdr += f"Authorization: Bearer {token}\r\n"
    s = socket.create_connection(("127.0.0.1", fa.port))
    s.settimeout(10)
    s.sendall(hdr.encode() + b"\r\n")
    try:
        for p in parts:
            time.sleep(pause)
            s.sendall(p)
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = http.client.HTTPResponse(s)
    resp.begin()
    out = resp.status, resp.read()
    s.close()
    return out


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def test_sign_in_form_over_8k_is_413(fa):
    status, body = post(fa, "/oauth2/sign_in", b"username=a&password=" + b"x" * 9000, FORM)
    assert status == 413
    assert b"The form is too large." in body
    answers_others(fa)


def test_sign_in_form_announced_over_8k_is_413_before_reading_it(fa):
    status, body = post(fa, "/oauth2/sign_in", b"", FORM, length=100 * 1024 * 1024)
    assert status == 413
    assert b"The form is too large." in body


def test_a_sign_in_form_that_trickles_is_408_after_body_timeout(fa):
    t = time.monotonic()
    status, body = post(fa, "/oauth2/sign_in", b"", FORM, chunks=[b"username=a", b"&password=b"] + [b"x"] * 10,
                        pause=0.3)
    assert status == 408
    assert b"The form did not arrive in time. Please try again." in body
    assert time.monotonic() - t < 5


def test_a_form_in_two_packets_is_read_whole(fa):
    status, body = post(fa, "/oauth2/sign_in", b"", FORM, chunks=[b"username=nobody&pass", b"word=wrong&csrf=x"],
                        pause=0.2)
    assert status == 403  # read whole: it got as far as the CSRF check
    assert b"Please try again" in body or b"expired" in body or b"form" in body


@pytest.mark.parametrize("body, status, description", [
    (b'{"username": "' + b"a" * 17000 + b'"}', 413, "the body must be at most 16384 bytes"),
    (b"[" * 17 + b"]" * 17, 400, "the body is not valid JSON (nested deeper than 16 levels)"),
    (b"[" * 8000 + b"]" * 8000, 400, "the body is not valid JSON (nested deeper than 16 levels)"),
    (b'{"username": "x1", "username": "root"}', 400, "the body is not valid JSON (a key appears twice in one object)"),
    (b'{"username": NaN}', 400, "the body is not valid JSON (NaN is not a JSON number)"),
    (b'{"username": "\xff"}', 400, "the body is not valid JSON (not UTF-8)"),
])
def test_admin_api_bodies(fa, body, status, description):
    got, text = post(fa, "/api/v1/accounts", body, JSON, token=fa.admin)
    assert (got, json.loads(text)) == (status, {"error": "invalid_request", "error_description": description})
    answers_others(fa)


@pytest.mark.parametrize("path", ["/oauth2/sign_in", "/oauth2/totp", "/oauth2/totp/enroll",
                                  "/oauth2/webauthn/rename", "/oauth2/webauthn/remove"])
def test_every_form_route_refuses_an_oversized_form(fa, path):
    status, body = post(fa, path, b"code=1&csrf=" + b"x" * 9000, FORM)
    assert status == 413
    assert b"The form is too large." in body
    answers_others(fa)


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/v1/accounts"),
    ("PUT", "/api/v1/accounts/bob/roles"),
    ("POST", "/api/v1/accounts/bob/tokens"),
    ("PUT", "/api/v1/accounts/bob/dbcreds"),
    ("POST", "/api/v1/token"),
])
def test_every_json_route_refuses_an_oversized_or_deep_body(fa, method, path):
    for body, status, description in (
            (b'{"name": "' + b"a" * 17000 + b'"}', 413, "the body must be at most 16384 bytes"),
            (b"[" * 5000 + b"]" * 5000, 400, "the body is not valid JSON (nested deeper than 16 levels)")):
        hdr = (f"{method} {path} HTTP/1.1\r\nHost: {AUTH}\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
               + ("" if path == "/api/v1/token" else f"Authorization: Bearer {fa.admin}\r\n")  # exchange: the body
               + "Connection: close\r\n\r\n").encode()
        out, _ = raw(fa, hdr + body)
        first, _, text = head(b"", out.removesuffix(b"<reset>"))
        assert first.startswith(b"HTTP/1.1 %d " % status), out[:300]
        assert json.loads(text) == {"error": "invalid_request", "error_description": description}
    answers_others(fa)


PASSKEY_ROUTES = ["/oauth2/webauthn/register/options", "/oauth2/webauthn/register", "/oauth2/webauthn/step_up/options",
                  "/oauth2/webauthn/step_up", "/oauth2/webauthn/sign_in/options", "/oauth2/webauthn/sign_in"]
UNREADABLE = {"error": "The request could not be read."}
TOO_LARGE = {"error": "The request is too large."}


@pytest.mark.parametrize("path", PASSKEY_ROUTES)
def test_every_passkey_route_refuses_an_oversized_deep_ambiguous_or_non_json_body(fa, path):
    """The WebAuthn ceremonies' JSON (webauthn.common.read_json over web.bodies: 60 KiB, 8 levels)."""
    for body, ctype, length, status, answer in (
            (b'{"csrf": "' + b"a" * 62000 + b'"}', JSON, None, 413, TOO_LARGE),
            (b"", JSON, 100 * 1024 * 1024, 413, TOO_LARGE),  # announced: refused before it is read
            (b'{"csrf": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, None, 400, UNREADABLE),
            (b'{"credential": ' + b'{"a": ' * 8 + b"1" + b"}" * 8 + b"}", JSON, None, 400, UNREADABLE),
            (b'{"csrf": "a", "csrf": "b"}', JSON, None, 400, UNREADABLE),
            (b'{"csrf": NaN}', JSON, None, 400, UNREADABLE),
            (b'{"csrf": "\xff"}', JSON, None, 400, UNREADABLE),
            (b"csrf=x", FORM, None, 415, {"error": "The request must be JSON."})):
        got, text = post(fa, path, body, ctype, length=length)
        assert (got, json.loads(text)) == (status, answer), body[:40]
    answers_others(fa)


def test_a_passkey_request_that_trickles_is_408_and_one_in_two_packets_is_read_whole(fa):
    t = time.monotonic()
    got, text = post(fa, "/oauth2/webauthn/sign_in/options", b"", JSON, chunks=[b'{"csrf":'] + [b" "] * 10,
                     pause=0.3)
    assert (got, json.loads(text)) == (408, {"error": "The request did not arrive in time. Please try again."})
    assert time.monotonic() - t < 5
    answers_others(fa)
    got, text = post(fa, "/oauth2/webauthn/sign_in/options", b"", JSON, chunks=[b'{"csrf":', b' "x", "rd": ""}'],
                     pause=0.2)  # read whole: it got as far as the CSRF check
    assert (got, json.loads(text)) == (403, {"error": "This page has expired or was not sent from this site. "
                                                      "Please reload it and try again."})


def test_admin_api_body_in_two_packets_is_read_whole(fa):
    got, text = post(fa, "/api/v1/accounts", b"", JSON, token=fa.admin, chunks=[b'{"username":', b' "carol"}'],
                     pause=0.2)
    assert got == 201, text
    assert json.loads(text)["username"] == "carol"


def test_admin_api_body_that_trickles_is_408(fa):
    got, text = post(fa, "/api/v1/accounts", b"", JSON, token=fa.admin, chunks=[b'{"username":'] + [b" "] * 10,
                     pause=0.3)
    assert (got, json.loads(text)) == (408, {"error": "invalid_request",
                                             "error_description": "the body did not arrive in time"})


@pytest.mark.parametrize("body, status, description", [
    (b'{"username": "a", "password": "' + b"x" * 17000 + b'"}', 413, "the body must be at most 16384 bytes"),
    (b'{"username": "a", "password": "b", "password": "c"}', 400,
     "the body is not valid JSON (a key appears twice in one object)"),
])
def test_token_exchange_bodies(fa, body, status, description):
    got, text = post(fa, "/api/v1/token", body, JSON)
    assert (got, json.loads(text)) == (status, {"error": "invalid_request", "error_description": description})
    answers_others(fa)


# --- device routes (issue 11): the pairing exchange and a device's answer --------------------

DEVICE_ROUTES = ["/api/v1/device/pair", "/api/v1/device/requests/no-such-request"]


def device_post(fa, path: str, body: bytes, content_type: str = JSON, **kw) -> tuple[int, object]:
    token = fa.device if path.startswith("/api/v1/device/requests/") else None  # pairing: the code is the proof
    got, text = post(fa, path, body, content_type, token=token, **kw)
    return got, json.loads(text)


@pytest.mark.parametrize("path", DEVICE_ROUTES)
@pytest.mark.parametrize("body, status, description", [
    (b'{"name": "' + b"a" * 17000 + b'"}', 413, "the body must be at most 16384 bytes"),
    (b"[" * 17 + b"]" * 17, 400, "the body is not valid JSON (nested deeper than 16 levels)"),
    (b"[" * 8000 + b"]" * 8000, 400, "the body is not valid JSON (nested deeper than 16 levels)"),
    (b'{"decision": "deny", "decision": "approve"}', 400,
     "the body is not valid JSON (a key appears twice in one object)"),
    (b'{"code": NaN}', 400, "the body is not valid JSON (NaN is not a JSON number)"),
    (b'{"code": "\xff"}', 400, "the body is not valid JSON (not UTF-8)"),
    (b"{", 400, "the body is not valid JSON"),
])
def test_device_route_bodies(fa, path, body, status, description):
    assert device_post(fa, path, body) == (status, {"error": "invalid_request", "error_description": description})
    answers_others(fa)


@pytest.mark.parametrize("path", DEVICE_ROUTES)
def test_device_routes_take_json_only(fa, path):
    assert device_post(fa, path, b"code=x", FORM) == (415, {"error": "invalid_request",
                                                            "error_description": "the body must be application/json"})


@pytest.mark.parametrize("path", DEVICE_ROUTES)
def test_device_route_body_announced_over_16k_is_413_before_reading_it(fa, path):
    assert device_post(fa, path, b"", length=100 * 1024 * 1024) == (
        413, {"error": "invalid_request", "error_description": "the body must be at most 16384 bytes"})
    answers_others(fa)


@pytest.mark.parametrize("path", DEVICE_ROUTES)
def test_device_route_body_that_trickles_is_408(fa, path):
    t = time.monotonic()
    assert device_post(fa, path, b"", chunks=[b'{"code":'] + [b" "] * 10, pause=0.3) == (
        408, {"error": "invalid_request", "error_description": "the body did not arrive in time"})
    assert time.monotonic() - t < 5


def test_device_bodies_in_two_packets_are_read_whole(fa):
    # Read whole, each gets as far as its own check (was 400 "not valid JSON": half a body read).
    assert device_post(fa, "/api/v1/device/pair", b"", chunks=[b'{"code": "ABCD-EFGH-', b'JKLM-NPQR", "name": "x"}'],
                       pause=0.2) == (403, {"error": "invalid_code", "error_description": "the pairing code is "
                                                                                          "not valid: wrong, expired "
                                                                                          "or used already"})
    assert device_post(fa, DEVICE_ROUTES[1], b"", chunks=[b'{"decision":', b' "deny"}'], pause=0.2) == (
        404, {"error": "not_found", "error_description": "no such request"})


def test_concurrent_long_polls_per_user_are_limited(fa):
    """devices.limits.polls_per_user (2 here): a third device of one user polling while two wait is 429 at once
    (a device's own new poll replaces its waiting one: not counted)."""
    creds = [paired_device(fa.workdir / "state.db", "bob") for _ in range(3)]

    def poll(cred: str, etag: str | None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", fa.port, timeout=10)
        headers = {"Host": AUTH, "Authorization": f"Bearer {cred}"}
        if etag:
            headers["If-None-Match"] = etag
        conn.request("GET", "/api/v1/device/requests", headers=headers)
        return conn

    first = poll(creds[0], None).getresponse()
    assert first.status == 200
    etag = first.getheader("ETag")
    waiting = [poll(c, etag) for c in creds[:2]]
    time.sleep(0.5)  # both are waiting
    t = time.monotonic()
    r = poll(creds[2], etag).getresponse()
    assert (r.status, r.getheader("Retry-After"), json.loads(r.read())) == (
        429, "5", {"error": "too_many_polls", "error_description": "too many polls waiting for this account"})
    assert time.monotonic() - t < 1
    answers_others(fa)
    for conn in waiting:  # they end with 304 at poll_timeout
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("ETag")) == (304, etag)
        conn.close()


# --- logs ---------------------------------------------------------------------------------


def test_denials_are_logged_at_most_denial_log_lines_a_second_and_the_rest_counted(fa):
    def suppressed() -> float:
        m = re.search(r'^forwardauth_log_lines_suppressed_total\{what="denials"\} (\S+)',
                      fa.api("GET", "/metrics").text, re.M)
        return float(m.group(1)) if m else 0.0

    time.sleep(1.1)
    before_log, before_count = len(log_text(fa)), suppressed()
    t = time.monotonic()
    for _ in range(200):
        assert fa.decide("/mfa/x", token=fa.bob).status in (401, 403)
    took = time.monotonic() - t
    lines = [json.loads(x) for x in log_text(fa)[before_log:].splitlines() if '"msg": "decision"' in x]
    assert 1 <= len(lines) <= 5 * (int(took) + 2)
    assert suppressed() - before_count == 200 - len(lines)
    time.sleep(1.1)
    fa.decide("/mfa/x", token=fa.bob)
    last = [json.loads(x) for x in log_text(fa).splitlines() if '"msg": "decision"' in x][-1]
    assert last["suppressed"] > 0


# --- reload -------------------------------------------------------------------------------


def test_a_sighup_with_an_alias_bomb_is_refused_while_decisions_flow(fa):
    original = fa.config.read_text()
    levels = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + \
        [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = original.replace("policy:", "\n".join(levels) + "\npolicy:", 1).replace(
        "default: deny", "default: deny\n  rules_extra: *l8", 1)
    fa.config.write_text(bomb)
    before = len(log_text(fa))
    slowest = 0.0
    try:
        fa.proc.popen.send_signal(signal.SIGHUP)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            t = time.monotonic()
            answers_others(fa)
            slowest = max(slowest, time.monotonic() - t)
    finally:
        fa.config.write_text(original)
    assert slowest < 0.5
    refused = [json.loads(x) for x in log_text(fa)[before:].splitlines() if "reload refused" in x]
    assert len(refused) == 1
    assert refused[0]["problems"] == [f"{fa.config}: YAML: aliases expand to more than "
                                      f"{1_000_000 + 4 * len(bomb):,} nodes and characters "
                                      "(write the values out, or use fewer nested aliases)"]


# --- how many connections -------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    server = TokenServer(tmp_path_factory.mktemp("capped"),
                         extra={"limits": {**LIMITS, "max_connections": 20, "header_timeout": "30s",
                                           "keepalive_timeout": "60s", "body_timeout": "3s"}})
    server.account("bob")
    with server:
        server.bob = server.token("bob", "--name", "bob")
        known(server)
        yield server


def test_over_max_connections_the_longest_idle_connections_are_closed(capped):
    idle = [socket.create_connection(("127.0.0.1", capped.port)) for _ in range(20)]
    time.sleep(0.3)
    newer = [socket.create_connection(("127.0.0.1", capped.port)) for _ in range(5)]
    time.sleep(0.3)
    answers_others(capped)  # a new connection is answered
    for s in idle[:6]:  # the oldest went first (a batch of one per new connection here: 20 // 100 -> 1)
        s.settimeout(2)
        assert s.recv(1) == b""
    for s in newer:
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recv(1)
    for s in idle + newer:
        s.close()


def test_with_every_connection_busy_a_new_one_is_answered_503(capped):
    """Twenty requests whose bodies do not come (each handler waits up to body_timeout): the 21st
    connection is refused with 503 at once, and once they are answered, requests flow again."""
    busy = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", capped.port))
        s.sendall(f"POST /oauth2/sign_in HTTP/1.1\r\nHost: {AUTH}\r\nContent-Type: {FORM}\r\n"
                  f"Content-Length: 100\r\n\r\n".encode())
        busy.append(s)
    time.sleep(0.5)
    try:
        out, took = raw(capped, b"GET /healthz HTTP/1.1\r\nHost: auth.test\r\n\r\n")
        # (the server closes with the request unread: the kernel may follow the answer with a reset)
        assert out.removesuffix(b"<reset>") == (
            b"HTTP/1.1 503 Service Unavailable\r\nServer: forwardauth\r\nConnection: close\r\n"
            b"Retry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 33\r\n\r\n"
            b"Too many connections; try again.\n")
        assert took < 1
        for s in busy:
            s.settimeout(6)
            assert s.recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in busy:
            s.close()
    time.sleep(0.3)
    answers_others(capped)
    metrics = capped.api("GET", "/metrics").text
    assert re.search(r'^forwardauth_connections_closed_total\{reason="over_limit"\} [1-9]', metrics, re.M)
    assert "connection limit reached: refused a connection, every connection is busy with a request" \
        in log_text(capped)


def test_decisions_flow_while_idle_connections_keep_coming(capped):
    """A connection every 5 ms that never sends anything, ten times the cap a second: the server
    keeps closing the ones waiting longest, and decisions on fresh connections are answered."""
    stop = threading.Event()
    opened: list[socket.socket] = []

    def flood() -> None:
        while not stop.is_set():
            try:
                opened.append(socket.create_connection(("127.0.0.1", capped.port), timeout=1))
            except OSError:
                pass
            time.sleep(0.005)

    th = threading.Thread(target=flood)
    th.start()
    try:
        time.sleep(0.5)
        for _ in range(20):
            answers_others(capped, within=1.0)
            time.sleep(0.05)
    finally:
        stop.set()
        th.join()
        for c in opened:
            c.close()
    assert len(opened) > 100
