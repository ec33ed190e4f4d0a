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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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
        # Token ids seen revoked (-> when, expires): never let in again while this
        # process runs, and written back if the store comes back without them.
        self.revoked: dict[str, tuple[float, float]] = {}
        self.losses_seen = 0

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
            losses = getattr(store, "losses", 0)
            lost = losses != self.losses_seen or version < self.version
            if force or due or lost or version != self.version:
                metas = await store.list_tokens()
                now = time.time()
                if lost:
                    await self._write_back(store, metas)
                    self.losses_seen = losses
                for m in metas:
                    if m.revoked is not None:
                        self.revoked[m.id] = (m.revoked, m.expires)
                self.revoked = {i: r for i, r in self.revoked.items() if r[1] > now}
                self.tokens = _keep_unchanged(self.tokens, {m.id: m for m in metas
                                                            if m.revoked is None and m.id not in self.revoked})
                listed = await store.list_accounts()
                self.accounts = _keep_unchanged(self.accounts, {
                    a.username: Principal(a.username, a.kind, a.email, a.display_name, tuple(a.groups),
                                          a.status == "active")
                    for a in listed})
                self.version = version
                self.loaded_at = time.monotonic()

        return await self._guarded(load)

    async def _write_back(self, store: _IndexStore, metas: list[TokenMeta]) -> None:
        """The store holds less than this process saw: revoke again the tokens seen
        revoked that it lists as active (a token it no longer lists is refused anyway)."""
        again = [m for m in metas if m.revoked is None and m.id in self.revoked]
        for m in again:
            await store.revoke_token(m.id, self.revoked[m.id][0])
        if again:
            log.error("the state store lost the revocation of %d tokens this process had seen revoked: "
                      "revoked them again", len(again))


class UsageRecorder:
    """Last use of each token, collected in memory and written in batches.

    The hot path only sets a dict entry; a background task flushes every
    `tokens.last_used_flush` (and at shutdown), so token use never waits on
    the store and one busy token costs one write per flush, not per request.
    """

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self._failing: str | None = None  # the last failure logged (a store down for an hour is one line)

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
        except Exception as exc:  # noqa: BLE001 - StoreUnavailable or a bug: keep the batch, keep the loop
            why = str(exc) if isinstance(exc, StoreUnavailable) else failure(exc)
            if why != self._failing:  # once per distinct failure, not at every flush
                log.warning("last-used write failed, kept for the next flush: %s", why)
                self._failing = why
            for k, v in batch.items():
                self.pending[k] = max(v, self.pending.get(k, 0.0))
            return
        if self._failing is not None:
            log.warning("last-used write works again")
            self._failing = None
        if report is not None:
            report(batch)

    async def run(self, tokens: TokenStore, interval: float,
                  report: Callable[[dict[str, float]], None] | None = None) -> None:
        """Flush every `interval`; while writes fail, less and less often (up to
        every 30 s), so a store that holds each write for its busy timeout (a
        database locked by another process) is not kept busy with these."""
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush(tokens, report)
            except Exception as exc:  # noqa: BLE001 - e.g. the audit report: log it, keep flushing
                log.error("last-used flush failed: %s", failure(exc))
            delay = interval if self._failing is None else min(max(delay * 2, 1.0), 30.0)
