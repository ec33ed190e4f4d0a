"""The in-memory view of revocations that the hot path reads.

Each process keeps a snapshot of user epochs and revoked ids and refreshes it
in the background (a cheap version check, a full reload only on change), so a
decision never touches the disk or the network. A revocation is in force on
every replica within one refresh interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from forwardauth.state.base import RevocationSnapshot, StateStore, StoreUnavailable

log = logging.getLogger("forwardauth.revocation")


class Revocations:
    def __init__(self) -> None:
        self.snapshot = RevocationSnapshot(-1)
        self.last_ok: float | None = None  # when the store last answered
        self.last_error: str | None = None

    def is_revoked(self, sub: str, ident: str, issued_at: float) -> bool:
        snap = self.snapshot
        epoch = snap.epochs.get(sub)
        if epoch is not None and issued_at < epoch:
            return True
        return ident in snap.revoked

    def epoch(self, sub: str) -> float | None:
        return self.snapshot.epochs.get(sub)

    async def refresh(self, store: StateStore, now: float | None = None) -> bool:
        """Reload from the store if it changed. Returns True when the store answered."""
        try:
            version = await store.revocation_version()
            if version != self.snapshot.version:
                self.snapshot = await store.revocations(time.time() if now is None else now)
        except StoreUnavailable as exc:
            if self.last_error != str(exc):
                log.warning("revocation refresh failed: %s", exc)
            self.last_error = str(exc)
            return False
        self.last_ok = time.monotonic()
        self.last_error = None
        return True

    async def run(self, store: StateStore, interval: float) -> None:
        """Refresh forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh(store)
