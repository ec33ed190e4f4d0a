"""The in-memory view of tokens and accounts that bearer decisions read.

Like `Revocations`, and by the same loop (`forwardauth.state.refresh`), it is
refreshed in the background (a version check each tick, and a full reload
every `index_refresh` so group changes arrive too), so the hot path never
waits on the store. A token id the index does not know is refused: a token
minted a moment ago on another replica works as soon as this one has heard
of it (pub/sub with Redis, one refresh otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from forwardauth.state.base import AccountStore, StoreUnavailable, TokenStore
from forwardauth.state.records import TokenMeta
from forwardauth.state.refresh import Snapshot, failure

log = logging.getLogger("forwardauth.tokens")


@dataclass(frozen=True)
class Principal:
    """What a decision needs to know about an account."""

    name: str
    kind: str = "human"
    email: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    active: bool = True


def _keep_unchanged(old: dict, new: dict) -> dict:
    """`new`, but with the object already held wherever the record is equal: the
    token fast path (bearer.TokenVerifier.known) and the decision memo compare
    these objects by identity, so a reload that changes nothing keeps them."""
    return {k: old[k] if k in old and old[k] == v else v for k, v in new.items()}


class _IndexStore(TokenStore, AccountStore, Protocol):
    """What the index reads: tokens and accounts (every `StateStore` has both)."""


class TokenIndex(Snapshot):
    what = "token index refresh"
    log = log

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, TokenMeta] = {}
        self.accounts: dict[str, Principal] = {}
        self.version = -1
        self.loaded_at = 0.0  # monotonic time of the last full load

    def token(self, token_id: str) -> TokenMeta | None:
        return self.tokens.get(token_id)

    def account(self, name: str) -> Principal | None:
        return self.accounts.get(name)

    async def refresh(self, store: _IndexStore, full_every: float, force: bool = False) -> bool:
        """Reload when the version moved, when `full_every` has passed, or when forced.
        Returns True when the store answered."""

        async def load() -> None:
            version = await store.tokens_version()
            due = time.monotonic() - self.loaded_at >= full_every
            if force or due or version != self.version:
                metas = await store.list_tokens()
                self.tokens = _keep_unchanged(self.tokens, {m.id: m for m in metas if m.revoked is None})
                listed = await store.list_accounts()
                self.accounts = _keep_unchanged(self.accounts, {
                    a.username: Principal(a.username, a.kind, a.email, a.display_name, tuple(a.groups),
                                          a.status == "active")
                    for a in listed})
                self.version = version
                self.loaded_at = time.monotonic()

        return await self._guarded(load)


class UsageRecorder:
    """Last use of each token, collected in memory and written in batches.

    The hot path only sets a dict entry; a background task flushes every
    `tokens.last_used_flush` (and at shutdown), so token use never waits on
    the store and one busy token costs one write per flush, not per request.
    """

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def used(self, token_id: str, now: float) -> None:
        self.pending[token_id] = now

    async def flush(self, tokens: TokenStore, report: Callable[[dict[str, float]], None] | None = None) -> None:
        """Write the pending last-use times; `report(batch)` after a good write
        (one audit line per token per flush, not one per request)."""
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        try:
            await tokens.touch_tokens(batch)
        except Exception as exc:  # StoreUnavailable or a bug: keep the batch, keep the loop
            why = str(exc) if isinstance(exc, StoreUnavailable) else failure(exc)
            log.warning("last-used write failed, kept for the next flush: %s", why)
            for k, v in batch.items():
                self.pending[k] = max(v, self.pending.get(k, 0.0))
            return
        if report is not None:
            report(batch)

    async def run(self, tokens: TokenStore, interval: float,
                  report: Callable[[dict[str, float]], None] | None = None) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(tokens, report)
            except Exception as exc:  # e.g. the audit report: log it, keep flushing
                log.error("last-used flush failed: %s", failure(exc))
