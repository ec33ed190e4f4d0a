"""The device long-poll through real nginx, Traefik and Caddy, configured as
shipped (examples/): a waiting poll is answered through the proxy when a
request appears, survives the whole default poll_timeout (50 s) to end in a
304 with the same ETag, and the next poll goes out on the same client
connection. And which of Traefik's timeouts bound a poll (only writeTimeout),
as examples/traefik/traefik.yaml and devices/settings.py say."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import yaml

from harness.ci import missing_tool
from harness.devices import Browser, add_account, devices_server
from harness.procs import Proc, free_port, http_status
from harness.proxies import (
    MissingTool,
    Running,
    require,
    start_caddy,
    start_nginx_example,
    start_traefik,
    traefik_static,
)

pytestmark = pytest.mark.proxy
AUTH_HOST = "auth.example.com"  # the shipped nginx and Traefik examples' name for forwardauth's site


class Conn:
    """One client connection, kept: HTTP/1.1 requests one after another on it."""

    def __init__(self, port: int, host: str) -> None:
        self.port, self.host = port, host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the proxy closed the connection")
        status = int(status_line.split()[1])
        got: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            got[k.strip().lower()] = v.strip()
        if status in (204, 304):
            return status, got, b""
        if got.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
            return status, got, data
        return status, got, await self.reader.readexactly(int(got.get("content-length", "0")))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def up(running: Running, host: str) -> Running:
    running.proc.start()
    try:
        running.proc.wait_until(lambda: http_status(running.auth_port or running.port, "/healthz", host) == 200,
                                what="proxying forwardauth's /healthz")
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture(scope="module")
def setup(tmp_path_factory, echo_app):
    for name in ("nginx", "traefik", "caddy"):
        try:
            require(name)
        except MissingTool as exc:
            missing_tool(str(exc))
    work = tmp_path_factory.mktemp("devices-proxies")
    # poll_timeout: the default, 50 s; requests live longer, so that only the timeout ends the wait
    fa = devices_server(work / "fa", devices={"level": "mfa", "request_ttl": "2m"})
    for name in ("nginx", "traefik", "caddy"):
        add_account(fa, f"via-{name}")
    with fa:
        proxies = {}
        try:
            proxies["nginx"] = (up(start_nginx_example(work / "nginx", fa.port, echo_app.port), AUTH_HOST), AUTH_HOST)
            proxies["traefik"] = (up(start_traefik(work / "traefik", fa.port, echo_app.port, "app.test",
                                                   "forwardauth", log_level="INFO"), AUTH_HOST), AUTH_HOST)
            caddy = start_caddy(work / "caddy", fa.port, echo_app.port, "app.test")
            proxies["caddy"] = (up(caddy, f"127.0.0.1:{caddy.auth_port}"), f"127.0.0.1:{caddy.auth_port}")
            yield fa, proxies
        finally:
            for running, _ in proxies.values():
                running.stop()


async def pair_through(fa, running: Running, host: str, user: str) -> str:
    browser = Browser(f"http://127.0.0.1:{fa.port}")
    browser.signed_in(fa.issue(user, "mfa"))
    code = await browser.new_pairing_code()
    await browser.close()
    c = Conn(running.auth_port or running.port, host)
    status, _, body = await c.request("POST", "/api/v1/device/pair",
                                      body=f'{{"code": "{code}", "name": "phone"}}'.encode())
    c.close()
    assert status == 201, body
    return yaml.safe_load(body)["credential"]


async def one_proxy(fa, name: str, running: Running, host: str) -> None:
    user = f"via-{name}"
    auth = {"Authorization": f"Bearer {await pair_through(fa, running, host, user)}"}
    c = Conn(running.auth_port or running.port, host)
    status, h, _ = await c.request("GET", "/api/v1/device/requests", auth)
    assert status == 200, name
    empty = h["etag"]

    # 1. a request appears: the waiting poll is answered through the proxy at once
    poll = asyncio.ensure_future(c.request("GET", "/api/v1/device/requests", {**auth, "If-None-Match": empty}))
    await asyncio.sleep(0.5)
    assert not poll.done(), name
    browser = Browser(f"http://127.0.0.1:{fa.port}")
    t0 = time.monotonic()
    await browser.ask(username=user)
    status, h, body = await asyncio.wait_for(poll, 5)
    assert status == 200 and time.monotonic() - t0 < 1.0 and b'"phrases"' in body, (name, status, body)
    one = h["etag"]

    # 2. nothing changes: the poll waits the whole poll_timeout and ends in a 304 with the same ETag
    t0 = time.monotonic()
    status, h, _ = await c.request("GET", "/api/v1/device/requests", {**auth, "If-None-Match": one})
    took = time.monotonic() - t0
    assert (status, h["etag"]) == (304, one) and 44 < took < 52, (name, status, took)

    # 3. the next poll goes out on the same connection (the 304 kept it), and the
    #    request going away (cancelled in the browser) answers it
    poll = asyncio.ensure_future(c.request("GET", "/api/v1/device/requests", {**auth, "If-None-Match": one}))
    await asyncio.sleep(0.5)
    status, _, html = await browser.get("/oauth2/devices/wait")
    csrf = html.split('name="csrf" value="')[1].split('"')[0]
    await browser.post("/oauth2/devices/cancel", {"csrf": csrf})
    status, h, body = await asyncio.wait_for(poll, 5)
    assert (status, h["etag"], body) == (200, empty, b'{"requests": []}'), name
    c.close()
    await browser.close()


async def test_the_long_poll_through_each_proxy(setup):
    fa, proxies = setup
    await asyncio.gather(*(one_proxy(fa, name, running, host) for name, (running, host) in proxies.items()))


@pytest.mark.parametrize("timeout, cut", [("readTimeout", False), ("idleTimeout", False), ("writeTimeout", True)])
async def test_which_traefik_timeouts_bound_a_poll(tmp_path, echo_app, timeout, cut):
    """poll_timeout 3 s against one Traefik timeout of 1 s: only writeTimeout cuts the poll."""
    try:
        binary = require("traefik")
    except MissingTool as exc:
        missing_tool(str(exc))
    fa = devices_server(tmp_path / "fa", devices={"level": "mfa", "poll_timeout": "3s"})
    add_account(fa, "alice")
    port = free_port()
    static = traefik_static(tmp_path, port, "INFO")
    cfg = yaml.safe_load(static.read_text())
    cfg["entryPoints"]["web"]["transport"]["respondingTimeouts"] = {timeout: "1s"}
    static.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "APP_HOST": "app.test", "FORWARDAUTH_URL": f"http://127.0.0.1:{fa.port}",
           "APP_URL": f"http://127.0.0.1:{echo_app.port}", "FORWARDAUTH_COOKIE": "forwardauth"}
    traefik = Running("traefik", port, Proc("traefik", [binary, f"--configFile={static}"], Path(tmp_path) / "t.log",
                                            env=env, cwd=tmp_path))
    with fa:
        up(traefik, AUTH_HOST)
        try:
            auth = {"Authorization": f"Bearer {await pair_through(fa, traefik, AUTH_HOST, 'alice')}"}
            c = Conn(port, AUTH_HOST)
            status, h, _ = await c.request("GET", "/api/v1/device/requests", auth)
            assert status == 200
            if cut:
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    await c.request("GET", "/api/v1/device/requests", {**auth, "If-None-Match": h["etag"]})
            else:
                status, again, _ = await c.request("GET", "/api/v1/device/requests",
                                                   {**auth, "If-None-Match": h["etag"]})
                assert (status, again["etag"]) == (304, h["etag"])
            c.close()
        finally:
            traefik.stop()
