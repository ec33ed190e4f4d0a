"""A misbehaving front for a real server (the test OpenID provider): an HTTP
proxy on 127.0.0.1 that passes requests on, or, on demand, is down (its port
closed), slow (answers after `delay` seconds) or answers garbage (200 with
an HTML body, whatever was asked). It runs its own event loop in a thread;
`mode` is switched from the test.

`ProxiedProvider` is the test OpenID provider with its issuer on the proxy,
so everything that talks to the provider (forwardauth, the provider's user
agent, its readiness check) goes through the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import aiohttp
from aiohttp import web

from .oidc import OidcProvider
from .procs import free_port

_HOP = {"transfer-encoding", "content-length", "content-encoding", "connection", "keep-alive", "host"}


class ChaosProxy:
    MODES = ("pass", "down", "slow", "garbage")

    def __init__(self, upstream_port: int | None = None, port: int | None = None, delay: float = 35.0):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.delay = delay
        self.mode = "pass"
        self.seen: list[tuple[str, str]] = []  # (mode, path) of every request that reached the proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._http: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        self.seen.append((mode, request.path))
        if mode == "down":  # a connection kept alive from before: dropped, as a dead server's would be
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=502)
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode == "garbage":
            return web.Response(status=200, text="<html><body>Service temporarily... {not json", content_type="text/html")
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers.get("Host", f"127.0.0.1:{self.port}")
        try:
            async with self._http.request(request.method, f"http://127.0.0.1:{self.upstream_port}{request.path_qs}",
                                          headers=headers, data=body or None, allow_redirects=False) as up:
                data = await up.read()
                out = web.Response(status=up.status, body=data)
                for k, v in up.headers.items():
                    if k.lower() not in _HOP:
                        out.headers.add(k, v)
                return out
        except aiohttp.ClientError:  # the provider itself is gone (teardown)
            return web.Response(status=502, text="upstream gone")

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def _run(self, coro) -> None:  # noqa: ANN001 - a coroutine
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> ChaosProxy:
        self._thread.start()
        self._run(self._start())
        return self

    def set(self, mode: str) -> None:
        """Switch to `mode`; "down" closes the port, any other opens it again."""
        assert mode in self.MODES
        if mode == "down" and self.mode != "down":
            self._run(self._unlisten())
        elif mode != "down" and self.mode == "down":
            self._run(self._listen())
        self.mode = mode

    def stop(self) -> None:
        async def close() -> None:
            for task in asyncio.all_tasks():  # a slow answer still sleeping: cut short
                if task is not asyncio.current_task():
                    task.cancel()
            if self._runner is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._runner.cleanup(), 5)
            if self._http is not None:
                await self._http.close()

        if self._thread.is_alive():
            self._run(close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


class ProxiedProvider(OidcProvider):
    """The test OpenID provider, its issuer (every URL it hands out) on `proxy`."""

    def __init__(self, proxy: ChaosProxy, *args, **kwargs):
        self.proxy = proxy
        super().__init__(*args, **kwargs)
        proxy.upstream_port = self.port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"
