"""/healthz and /readyz: for the orchestrator and the load balancer."""

from __future__ import annotations

from aiohttp import web

from forwardauth.web.context import CTX


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready once the state store has been read, and for as long as decisions
    are answered as usual: through a store outage up to tokens.stale_grace
    (answers come from memory meanwhile), so balancers do not pull every
    replica at once during a short outage (the rule: core.authorize.StorePolicy).
    Not ready either while the store reports a problem (StateStore.problem: its
    data lost and not yet acknowledged, its file deleted, a new store settling)."""
    ctx = request.app[CTX]
    # The store's own report first (its data lost and not acknowledged, its file
    # deleted, a new store settling): it says more than "not read yet".
    why = ctx.store.problem() or ctx.policy.not_ready(ctx.health(full=True))
    if why is not None:
        return web.Response(status=503, text=f"not ready: {why}\n")
    return web.Response(text="ready\n")
