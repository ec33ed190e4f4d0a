"""The tokens part in the app: what it adds, and its background work.

- bearer tokens on the decision endpoints and the identity assertion header
  (tokens.decisions.BearerTokens, the part's decision hooks);
- the token index, refreshed in the background (its health is part of the
  state store's: core.authorize.StorePolicy), and last-use times written in
  batches;
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
from forwardauth.tokens.store import token_store
from forwardauth.web.context import AppContext, Contribution


def build(app: web.Application, ctx: AppContext) -> Contribution:
    st = app[TOKENS] = BearerTokens(ctx.revocations)
    tasks: list[asyncio.Task[None]] = []

    def report(batch: dict[str, float]) -> None:
        for token_id in batch:
            meta = st.index.token(token_id)
            ctx.audit.emit("token_used", user=meta.account if meta else None,
                           reason=f"token {token_id}" + (f" ({meta.name})" if meta else ""))

    async def start() -> None:
        s = settings_mod.settings(ctx.runtime.config)
        tokens = token_store(ctx.store)
        accounts = ctx.store if hasattr(ctx.store, "list_accounts") else None
        await st.index.refresh(tokens, accounts, s.index_refresh, force=True)
        loop = asyncio.get_running_loop()
        tasks[:] = [
            loop.create_task(st.index.run(ctx.store, tokens, accounts, ctx.runtime.config.revocation_refresh,
                                          s.index_refresh)),
            loop.create_task(st.usage.run(tokens, s.last_used_flush, report)),
        ]

    async def stop() -> None:  # on shutdown: the store is still open
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await st.usage.flush(token_store(ctx.store), report)

    return Contribution(
        routes=routes.routes(),
        decisions=st,
        refreshed=(st.index,),
        startup=(start,),
        shutdown=(stop,),
        api_auth=caller,
        openapi=openapi.fragment(),
    )
