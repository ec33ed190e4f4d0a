"""The device API's answers over real HTTP (forwardauth/devices/api.py on the
throwaway server until the part is wired): every bad input's exact status,
headers and body; the long-poll's 200/304 with ETag; a client that closes its
connection mid-poll leaves nothing behind; shutdown answers waiting polls."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from forwardauth.devices.settings import DevicesSettings, Limits
from harness.devices_stub import DeviceStub


@pytest.fixture
async def stub():
    s = await DeviceStub(DevicesSettings(True, "mfa", poll_timeout=0.5, limits=Limits(polls_per_user=2)),
                         reap_interval=0.1).start()
    yield s
    await s.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as h:
        yield h


async def pair(stub, http) -> tuple[str, str]:
    async with http.post(f"{stub.url}/api/v1/device/pair",
                         json={"code": await stub.pairing_code(), "name": "phone"}) as r:
        assert r.status == 201 and r.headers["Cache-Control"] == "no-store"
        body = await r.json()
    assert set(body) == {"device", "credential"} and body["device"]["user"] == "alice"
    assert set(body["device"]) == {"id", "user", "name", "created", "last_seen"}
    return body["device"]["id"], body["credential"]


async def answer(resp: aiohttp.ClientResponse) -> tuple[int, CIMultiDict, object]:
    text = await resp.text()
    return resp.status, resp.headers.copy(), (json.loads(text) if text else None)


def err(code: str, description: str) -> dict:
    return {"error": code, "error_description": description}


@pytest.mark.parametrize("kw, status, body", [
    ({"data": "code=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
     err("invalid_request", "the body must be application/json")),
    ({"data": "{", "headers": {"Content-Type": "application/json"}}, 400,
     err("invalid_request", "the body is not valid JSON")),
    ({"data": '{"code": "ABCD-EFGH-JKLM-NPQR", "name": "a", "name": "b"}', "headers": {"Content-Type": "application/json"}},
     400, err("invalid_request", "the body is not valid JSON (a key appears twice in one object)")),
    ({"data": "[" * 17 + "]" * 17, "headers": {"Content-Type": "application/json"}}, 400,
     err("invalid_request", "the body is not valid JSON (nested deeper than 16 levels)")),
    ({"data": "x" * 20000, "headers": {"Content-Type": "application/json"}}, 413,
     err("invalid_request", "the body must be at most 16384 bytes")),
    ({"json": {"code": "ABCD-EFGH-JKLM-NPQR"}}, 400,
     err("invalid_request", "name: must be 1 to 64 printable characters")),
    ({"json": {"code": "ABCD-EFGH-JKLM-NPQR", "name": "x"}}, 403,
     err("invalid_code", "the pairing code is not valid: wrong, expired or used already")),
])
async def test_bad_pairing(stub, http, kw, status, body):
    async with http.post(f"{stub.url}/api/v1/device/pair", **kw) as r:
        got_status, headers, got = await answer(r)
    assert (got_status, got, headers["Cache-Control"]) == (status, body, "no-store")


async def post_in_two_packets(stub, path: str, first: bytes, second: bytes, headers: str = "") -> tuple[int, object]:
    """POST a JSON body whose second part is sent 0.2 s after the first (two TCP packets)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(first) + len(second)}\r\n{headers}Connection: close\r\n\r\n".encode() + first)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(second)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    return int(top.split()[1]), json.loads(body)


async def test_a_body_in_two_packets_is_read_whole(stub, http):
    # Regression: request.content.read(n) returned the first packet only: 400 "not valid JSON".
    status, body = await post_in_two_packets(stub, "/api/v1/device/pair", b'{"code": "' + (await stub.pairing_code()).encode(),
                                             b'", "name": "phone"}')
    assert status == 201 and body["device"]["name"] == "phone"  # type: ignore[index]
    _, cred = await pair(stub, http)
    req = await stub.ask()
    status, body = await post_in_two_packets(stub, f"/api/v1/device/requests/{req.id}", b'{"decision":',
                                             b' "deny"}', headers=f"Authorization: Bearer {cred}\r\n")
    assert (status, body) == (200, {"id": req.id, "state": "denied", "reason": "denied_on_device"})


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic eDp5"])
async def test_poll_without_a_valid_credential_is_401_with_a_challenge(stub, http, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    async with http.get(f"{stub.url}/api/v1/device/requests", headers=headers) as r:
        status, h, body = await answer(r)
    assert status == 401 and h["WWW-Authenticate"] == 'Bearer realm="forwardauth", error="invalid_token"'
    assert body == err("invalid_token", "the device credential is not valid (removed, or never paired)")


async def test_poll_200_then_304_then_200_when_a_request_appears(stub, http):
    _, cred = await pair(stub, http)
    auth = {"Authorization": f"Bearer {cred}"}
    async with http.get(f"{stub.url}/api/v1/device/requests", headers=auth) as r:
        status, h, body = await answer(r)
    assert (status, body, h["Cache-Control"]) == (200, {"requests": []}, "no-store")
    empty = h["ETag"]
    t0 = time.perf_counter()
    async with http.get(f"{stub.url}/api/v1/device/requests", headers={**auth, "If-None-Match": empty}) as r:
        status, h, body = await answer(r)
    assert (status, h["ETag"], body) == (304, empty, None) and 0.4 < time.perf_counter() - t0 < 1.5
    poll = asyncio.ensure_future(http.get(f"{stub.url}/api/v1/device/requests",
                                          headers={**auth, "If-None-Match": empty}))
    await asyncio.sleep(0.1)
    req = await stub.ask()
    async with await asyncio.wait_for(poll, 2) as r:
        status, h, body = await answer(r)
    assert status == 200 and h["ETag"] != empty
    assert body == {"requests": [{"id": req.id, "host": "app.example.com", "path": "/admin",
                                  "client": "203.0.113.5", "user_agent": "Firefox/130", "level": "mfa",
                                  "created": req.created, "expires": req.expires, "phrases": list(req.choices)}]}


async def test_answer_errors_and_success(stub, http):
    _, cred = await pair(stub, http)
    auth = {"Authorization": f"Bearer {cred}"}
    req = await stub.ask()
    url = f"{stub.url}/api/v1/device/requests/{req.id}"
    async with http.post(url, json={"decision": "maybe"}, headers=auth) as r:
        assert (r.status, await r.json()) == (400, err("invalid_request", 'decision: must be "approve" or "deny"'))
    async with http.post(f"{stub.url}/api/v1/device/requests/nope", json={"decision": "deny"}, headers=auth) as r:
        assert (r.status, await r.json()) == (404, err("not_found", "no such request"))
    async with http.post(url, json={"decision": "deny"}) as r:
        assert r.status == 401
    async with http.post(url, json={"decision": "approve", "phrase": req.phrase}, headers=auth) as r:
        assert (r.status, await r.json()) == (200, {"id": req.id, "state": "approved", "reason": None})
    async with http.post(url, json={"decision": "deny"}, headers=auth) as r:
        assert (r.status, await r.json()) == (409, err("not_pending", "the request is approved already"))


async def test_too_many_polls_is_429_with_retry_after(stub, http):
    creds = [(await pair(stub, http))[1] for _ in range(3)]
    async with http.get(f"{stub.url}/api/v1/device/requests", headers={"Authorization": f"Bearer {creds[0]}"}) as r:
        etag = r.headers["ETag"]
    waiting = [asyncio.ensure_future(http.get(f"{stub.url}/api/v1/device/requests",
                                              headers={"Authorization": f"Bearer {c}", "If-None-Match": etag}))
               for c in creds[:2]]
    await asyncio.sleep(0.1)
    async with http.get(f"{stub.url}/api/v1/device/requests",
                        headers={"Authorization": f"Bearer {creds[2]}", "If-None-Match": etag}) as r:
        status, h, body = await answer(r)
    assert (status, h["Retry-After"], body) == (429, "5", err("too_many_polls",
                                                               "too many polls waiting for this account"))
    for w in waiting:
        (await w).release()


async def test_a_client_closing_mid_poll_leaves_nothing_behind(stub, http):
    _, cred = await pair(stub, http)
    async with http.get(f"{stub.url}/api/v1/device/requests", headers={"Authorization": f"Bearer {cred}"}) as r:
        etag = r.headers["ETag"]
    stub.settings = stub.svc.settings = DevicesSettings(True, "mfa", poll_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", stub.port)
    writer.write(f"GET /api/v1/device/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {cred}\r\n"
                 f"If-None-Match: {etag}\r\n\r\n".encode())
    await writer.drain()
    for _ in range(50):
        await asyncio.sleep(0.02)
        if len(stub.hub):
            break
    assert len(stub.hub) == 1
    writer.close()
    t0 = time.perf_counter()
    while len(stub.hub) and time.perf_counter() - t0 < 2:
        await asyncio.sleep(0.02)
    assert len(stub.hub) == 0 and time.perf_counter() - t0 < 0.5  # reaper every 0.1 s


async def test_shutdown_answers_waiting_polls_at_once(stub, http):
    _, cred = await pair(stub, http)
    stub.settings = stub.svc.settings = DevicesSettings(True, "mfa", poll_timeout=30)
    async with http.get(f"{stub.url}/api/v1/device/requests", headers={"Authorization": f"Bearer {cred}"}) as r:
        etag = r.headers["ETag"]
    poll = asyncio.ensure_future(http.get(f"{stub.url}/api/v1/device/requests",
                                          headers={"Authorization": f"Bearer {cred}", "If-None-Match": etag}))
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    await stub.stop()
    async with await asyncio.wait_for(poll, 2) as r:
        assert (r.status, r.headers["ETag"]) == (304, etag)
    assert time.perf_counter() - t0 < 1
    await stub.start()  # for the fixture's stop
