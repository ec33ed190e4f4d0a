"""What the devices part keeps per app: the hub (one per app, kept across
reloads so waiting polls survive them) and the service of the current runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from forwardauth.core.runtime import Runtime
from forwardauth.devices.hub import Hub
from forwardauth.devices.service import DeviceService
from forwardauth.devices.settings import settings
from forwardauth.services.regulation import RegulationConfig, Regulator
from forwardauth.state.records import Device, RevocationSnapshot
from forwardauth.web.context import CTX


@dataclass
class DevicesState:
    """Per app: the hub (kept across reloads: waiting polls survive them) and
    the service of the current runtime."""

    hub: Hub = field(default_factory=Hub)
    runtime: Runtime | None = None
    service: DeviceService | None = None
    epochs: RevocationSnapshot | None = None  # the revocations last looked at (for wake_revoked)


DEVICES = web.AppKey("devices", DevicesState)


def regulation_of(runtime: Runtime) -> RegulationConfig:
    """Local sign-in's regulation settings (`local.regulation`), read without
    importing that part: a wrong phrase counts against the same limits as a
    wrong password. Defaults without a `local:` section."""
    local = runtime.config.sections.get("local")
    found = getattr(local, "regulation", None)
    return found if isinstance(found, RegulationConfig) else RegulationConfig()


def service_of(app: web.Application) -> DeviceService:
    """The service of the current runtime (rebuilt after a reload)."""
    ctx, st = app[CTX], app[DEVICES]
    if st.service is None or st.runtime is not ctx.runtime:
        s = settings(ctx.runtime.config)
        st.hub.polls_per_user = s.limits.polls_per_user

        def valid(d: Device, now: float) -> bool:
            # Dead when the user's epoch moved past its pairing (lock, `session revoke`, deletion).
            epoch = ctx.revocations.epoch(d.user)
            return epoch is None or d.created >= epoch

        st.service = DeviceService(s, ctx.store, st.hub, Regulator(ctx.store, regulation_of(ctx.runtime)),
                                   ctx.audit.emit, valid)
        st.runtime = ctx.runtime
    return st.service


def request_service(request: web.Request) -> DeviceService:
    return service_of(request.app)
