"""The in-memory view of revocations that the hot path reads.

Each process keeps a snapshot of user epochs and revoked ids and refreshes it
in the background (a cheap version check, a full reload only on change), so a
decision never touches the disk or the network. A revocation is in force on
every replica within one refresh interval.

The snapshot is plain dicts, not a cachetools cache: it is replaced whole on
each refresh and only read in between, and its size is bounded by the store
(which trims revoked ids once they expire anyway). A cache would evict
entries to stay under a size or age, and evicting an entry here would
un-revoke that user or session.

Refreshed by the process's one `forwardauth.state.refresh.Refresher`, with
the token index.
"""

from __future__ import annotations

import logging
import time

from forwardauth.state.base import RevocationStore
from forwardauth.state.records import RevocationSnapshot
from forwardauth.state.refresh import Snapshot

log = logging.getLogger("forwardauth.revocation")

# Locking an account sets its epoch this far in the future: every session and
# token issued before it, and any minted while the account stays locked, is dead.
FAR_FUTURE = 253402300799.0  # 9999-12-31T23:59:59Z


class Revocations(Snapshot):
    what = "revocation refresh"
    log = log

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = RevocationSnapshot(-1)

    def is_revoked(self, sub: str, ident: str, issued_at: float) -> bool:
        snap = self.snapshot
        epoch = snap.epochs.get(sub)
        if epoch is not None and issued_at < epoch:
            return True
        return ident in snap.revoked

    def epoch(self, sub: str) -> float | None:
        return self.snapshot.epochs.get(sub)

    async def refresh(self, store: RevocationStore, now: float | None = None) -> bool:
        """Reload from the store if it changed. Returns True when the store answered."""

        async def load() -> None:
            version = await store.revocation_version()
            if version != self.snapshot.version:
                self.snapshot = await store.revocations(time.time() if now is None else now)

        return await self._guarded(load)
