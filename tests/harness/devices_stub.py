"""A throwaway server for the device client and the devices benchmark, until
the devices part is wired into `forwardauth serve`: the part's own device API
(forwardauth/devices/api.py) over its service on the in-memory store, in the
caller's event loop. It can be stopped and started again on the same port
with its state kept, like a restarted server with a persistent store.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from forwardauth.devices import credentials
from forwardauth.devices.api import routes
from forwardauth.devices.hub import Hub
from forwardauth.devices.service import DeviceService
from forwardauth.devices.settings import DevicesSettings, Limits
from forwardauth.services.regulation import RegulationConfig, Regulator
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import ApprovalRequest

from .procs import free_port


class Audit:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, event: str, **fields: object) -> None:
        self.events.append(event)


class DeviceStub:
    def __init__(self, settings: DevicesSettings | None = None, port: int | None = None,
                 reap_interval: float = 1.0, record_peers: bool = False) -> None:
        self.settings = settings or DevicesSettings(True, "mfa", poll_timeout=50,
                                                    limits=Limits(requests_per_user=1000, requests_per_client=10**5))
        self.port = port or free_port()
        self.store = MemoryStore()
        self.hub = Hub(self.settings.limits.polls_per_user, reap_interval=reap_interval)
        self.audit = Audit()
        self.svc = DeviceService(self.settings, self.store, self.hub,
                                 Regulator(self.store, RegulationConfig()), self.audit)
        self.runner: web.AppRunner | None = None
        self.record_peers = record_peers
        self.peers: list[object] = []  # the client address and port of every request, when recorded

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, extra_routes: list[web.RouteDef] | None = None) -> DeviceStub:
        app = web.Application(middlewares=[self._note_peer] if self.record_peers else [])
        for method, path, handler in routes(lambda request: self.svc, lambda request: request.remote):
            app.router.add_route(method, path, handler)
        app.add_routes(extra_routes or [])
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=4096).start()
        self.hub.start(None)
        return self

    @web.middleware
    async def _note_peer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    async def stop(self) -> None:
        self.hub.end_all()
        await self.hub.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def pairing_code(self, user: str = "alice") -> str:
        code, _ = await self.svc.new_pairing_code(user)
        return credentials.format_code(code)

    async def ask(self, user: str = "alice", client: str = "203.0.113.5") -> ApprovalRequest:
        """What the browser's sign-in page will do: a request whose phrase it shows."""
        return await self.svc.request_approval(user, "app.example.com", "/admin", client, "Firefox/130")
