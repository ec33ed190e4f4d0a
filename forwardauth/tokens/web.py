"""The tokens part in the app: what it adds, and its background work.

- bearer tokens on the decision endpoints and the identity assertion header
  (tokens.decisions.BearerTokens, the part's decision hooks);
- the token index, refreshed with the revocations by the app's one refresh
  loop (state.refresh; its health is part of the state store's:
  core.authorize.StorePolicy), and last-use times written in batches;
- `/.well-known/jwks.json`, the token exchange and the admin API under
  `/api/v1/` (tokens.api), with the API caller authentication it offers
  every part's admin routes.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from forwardauth.tokens import settings as settings_mod
from forwardauth.tokens.api import openapi, routes
from forwardauth.tokens.api.auth import TOKENS, caller
from forwardauth.tokens.decisions import BearerTokens
from forwardauth.web.context import AppContext, Contribution


def build(app: web.Application, ctx: AppContext) -> Contribution:
    st = app[TOKENS] = BearerTokens(ctx.revocations)
    tasks: list[asyncio.Task[None]] = []

    def report(batch: dict[str, float]) -> None:
        for token_id in batch:
            meta = st.index.token(token_id)
            ctx.audit.emit("token_used", user=meta.account if meta else None,
                           reason=f"token {token_id}" + (f" ({meta.name})" if meta else ""))

    s = settings_mod.settings(ctx.runtime.config)

    async def start() -> None:
        interval = settings_mod.settings(ctx.runtime.config).last_used_flush
        tasks[:] = [asyncio.get_running_loop().create_task(st.usage.run(ctx.store, interval, report))]

    async def stop() -> None:  # on shutdown: the store is still open
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await st.usage.flush(ctx.store, report)

    return Contribution(
        routes=routes.routes(),
        decisions=st,
        refresh=(lambda: st.index.refresh(ctx.store, s.index_refresh),),
        refreshed=(st.index,),
        startup=(start,),
        shutdown=(stop,),
        api_auth=caller,
        openapi=openapi.fragment(),
    )
