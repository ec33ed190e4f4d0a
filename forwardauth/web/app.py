"""One aiohttp application: the core's routes, then what each part contributes.

The core's routes are the decision endpoints (web.decision_endpoints), the probes,
the metrics, /oauth2/start, sign-out, userinfo and the pages' stylesheet.
Each part's web build (composition.PARTS, in order) is called once with the
app and its context and returns a `Contribution`: routes, factors, decision
hooks, background work, and what it offers other parts. Nothing is
registered at import time, so two apps built in one process share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from forwardauth.core.runtime import Runtime, resolve_state_url
from forwardauth.services.audit import audit_log
from forwardauth.state import StateStore, open_store
from forwardauth.web import api, oauth2_start, pages, probes, signout, unavailable
from forwardauth.web.connections import hide_version
from forwardauth.web.context import CTX, AppContext, ConfigLoader, Contribution, PolicyOf
from forwardauth.web.decision_endpoints import ENDPOINTS, DecisionEndpoint, Handler
from forwardauth.web.metrics import metrics_handler

WebBuild = Callable[[web.Application, AppContext], Contribution]
AuditTarget = Callable[..., str]
DECISIONS_BY_PATH = web.AppKey("decisions_by_path", dict[str, Handler])


def build_app(runtime: Runtime, store: StateStore | None, builds: Sequence[WebBuild], *, load_config: ConfigLoader,
              policy_of: PolicyOf, audit_target: AuditTarget) -> web.Application:
    """The app for `runtime`. `builds`: the parts' web builds, in order;
    `audit_target(config)`: the audit log setting's value."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[unavailable.middleware])
    hide_version()  # Server: forwardauth, no versions (web/connections.py)
    cfg = runtime.config
    # Opened now: a path that cannot be written stops the start (ConfigError), not a request.
    audit = audit_log(cfg, audit_target(cfg))
    if store is None:
        # A new Redis store makes signed-in requests wait this long for running
        # replicas to notice and write back what they remember (state.redis).
        store = open_store(resolve_state_url(cfg), settle=2 * cfg.revocation_refresh + 3.0)
    ctx = AppContext(runtime, store, audit, load_config, policy_of)
    app[CTX] = ctx
    endpoints: dict[str, Handler] = {f"/auth/{name}": DecisionEndpoint(ctx, name).handle for name in ENDPOINTS}
    app[DECISIONS_BY_PATH] = endpoints
    r = app.router
    for path, handler in endpoints.items():
        r.add_get(path, handler)
    r.add_get("/healthz", probes.healthz)
    r.add_get("/readyz", probes.readyz)
    r.add_get("/metrics", metrics_handler)
    r.add_get(oauth2_start.START_PATH, oauth2_start.start)
    r.add_get("/oauth2/sign_out", signout.sign_out)
    r.add_get("/oauth2/userinfo", signout.userinfo)
    r.add_get(pages.STYLESHEET_PATH, pages.stylesheet)
    app.cleanup_ctx.append(_store_lifecycle)
    for build in builds:
        _add(app, ctx, build(app, ctx))
    if ctx.openapi:
        r.add_get(api.OPENAPI_PATH, api.openapi_json)

    async def close_audit(app: web.Application) -> None:
        ctx.audit.close()

    app.on_cleanup.append(close_audit)
    return app


def _add(app: web.Application, ctx: AppContext, c: Contribution) -> None:
    for route in c.routes:
        app.router.add_route(route.method, route.path, route.handler)
    ctx.factors.extend(c.factors)
    if c.decisions is not None:
        ctx.decisions.append(c.decisions)
    ctx.refreshed.extend(c.refreshed)
    for job in c.refresh:
        ctx.refresher.add(job)
    if c.sign_out is not None:
        ctx.sign_out.append(c.sign_out)
    if c.api_auth is not None:
        ctx.api_auth = c.api_auth
    if c.password_grant is not None:
        ctx.password_grant = c.password_grant
    if c.openapi:
        ctx.openapi.append(c.openapi)
    for fn in c.startup:
        app.on_startup.append(_signal(fn))
    for fn in c.shutdown:
        app.on_shutdown.append(_signal(fn))
    for fn in c.cleanup:
        app.on_cleanup.append(_signal(fn))


def _signal(fn: Callable[[], Awaitable[None]]) -> Callable[[web.Application], Awaitable[None]]:
    async def run(app: web.Application) -> None:
        await fn()

    return run


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The state store is opened and every snapshot of it read (the revocations,
    then the parts': state.refresh.Refresher) before the parts start (cleanup
    contexts run first); one loop keeps them fresh; the store closes after the
    parts stopped."""
    ctx = app[CTX]
    await ctx.store.open()
    await ctx.refresher.refresh()
    task = asyncio.get_running_loop().create_task(ctx.refresher.run(ctx.store, ctx.runtime.config.revocation_refresh))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ctx.store.close()
