"""Device approval against real `forwardauth serve` processes: a browser (a cookie
jar that fills in the pages' forms) and a device (the device API, one kept
connection), both plain HTTP clients, so a test can put them on different
replicas or workers."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp

from .forwardauth import APP_HOST, COOKIE, ForwardAuth, cli

RD = f"http://{APP_HOST}/mfa/page"
DEVICES = {"level": "mfa", "request_ttl": "30s"}


def devices_server(workdir, **extra: Any) -> ForwardAuth:
    """A server with local accounts and device approval at mfa (more config in `extra`)."""
    config = {"local": {"enabled": True}, "devices": dict(DEVICES)}
    for key, value in extra.items():
        config[key] = value
    return ForwardAuth(workdir, extra=config)


def add_account(fa: ForwardAuth, name: str) -> None:
    cli("users", "add", name, "-c", str(fa.config), "--generate")


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


class Browser:
    """One browser: its own cookies, pointed at one server (`base`)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    def signed_in(self, cookie: str) -> None:
        self.http.cookie_jar.update_cookies({COOKIE: cookie})

    async def get(self, path: str) -> tuple[int, dict[str, str], str]:
        async with self.http.get(self.base + path, allow_redirects=False) as r:
            return r.status, dict(r.headers), await r.text()

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, dict[str, str], str]:
        async with self.http.post(self.base + path, data=data, allow_redirects=False) as r:
            return r.status, dict(r.headers), await r.text()

    async def new_pairing_code(self) -> str:
        status, _, html = await self.get("/oauth2/devices")
        assert status == 200, html
        status, _, html = await self.post("/oauth2/devices/add", {"csrf": csrf(html)})
        assert status == 200, html
        m = re.search(r'id="pair-code">([A-Z2-9-]+)<', html)
        assert m, html
        return m.group(1)

    async def ask(self, username: str | None = None, rd: str = RD) -> str:
        """Send an approval request from the approve page; the phrase the waiting page shows."""
        status, _, html = await self.get(f"/oauth2/devices/approve?rd={rd}&level=mfa")
        assert status == 200, html
        form = {"csrf": csrf(html), "rd": rd, "level": "mfa"}
        if username is not None:
            form["username"] = username
        status, headers, html = await self.post("/oauth2/devices/approve", form)
        assert (status, headers.get("Location")) == (303, "/oauth2/devices/wait"), (status, html)
        status, _, html = await self.get("/oauth2/devices/wait")
        assert status == 200, html
        m = re.search(r'id="phrase">([a-z ]+)<', html)
        assert m, html
        return m.group(1)

    async def wait_outcome(self, timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
        """What the waiting page says once it is no longer waiting (it refreshes every second)."""
        deadline = time.monotonic() + timeout
        while True:
            status, headers, html = await self.get("/oauth2/devices/wait")
            if status != 200 or 'id="phrase"' not in html or time.monotonic() > deadline:
                return status, headers, html
            await _sleep(0.2)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


class Device:
    """A paired device speaking the device API over one kept connection."""

    def __init__(self, base: str, credential: str = "") -> None:
        self.base = base
        self.credential = credential
        self.etag: str | None = None
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                          timeout=aiohttp.ClientTimeout(total=120))

    async def close(self) -> None:
        await self.http.close()

    async def pair(self, code: str, name: str = "phone") -> str:
        async with self.http.post(self.base + "/api/v1/device/pair", json={"code": code, "name": name}) as r:
            body = await r.json()
            assert r.status == 201, body
        self.credential = body["credential"]
        return body["device"]["id"]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    async def poll(self) -> tuple[int, list[dict[str, Any]]]:
        headers = dict(self.auth)
        if self.etag:
            headers["If-None-Match"] = self.etag
        async with self.http.get(self.base + "/api/v1/device/requests", headers=headers) as r:
            body = await r.json() if r.status == 200 else None
            if r.status in (200, 304):
                self.etag = r.headers["ETag"]
            return r.status, body["requests"] if body else []

    async def answer(self, request_id: str, phrase: str | None) -> dict[str, Any]:
        body = {"decision": "deny"} if phrase is None else {"decision": "approve", "phrase": phrase}
        async with self.http.post(f"{self.base}/api/v1/device/requests/{request_id}", json=body,
                                  headers=self.auth) as r:
            got: dict[str, Any] = await r.json()
            assert r.status == 200, got
            return got
