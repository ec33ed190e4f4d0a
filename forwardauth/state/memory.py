"""In-process state, for tests and single-process experiments."""

from __future__ import annotations

import time

from forwardauth.state.base import RevocationSnapshot, StateStore
from forwardauth.state.local import Expiries, MemoryLocalMixin


class MemoryStore(MemoryLocalMixin, StateStore):
    def __init__(self) -> None:
        self.version = 0
        self.epochs: dict[str, float] = {}
        self.revoked: dict[str, float] = {}
        self._claims = Expiries()

    async def revocation_version(self) -> int:
        return self.version

    async def revocations(self, now: float) -> RevocationSnapshot:
        return RevocationSnapshot(
            self.version, dict(self.epochs), {k: v for k, v in self.revoked.items() if v > now}
        )

    async def set_epoch(self, user: str, epoch: float) -> float:
        self.epochs[user] = max(self.epochs.get(user, 0.0), epoch)
        self.version += 1
        return self.epochs[user]

    async def reset_epoch(self, user: str, epoch: float) -> None:
        self.epochs[user] = epoch
        self.version += 1

    async def revoke(self, ident: str, until: float) -> None:
        now = time.time()  # trim first, only what has expired anyway
        self.revoked = {k: v for k, v in self.revoked.items() if v >= now}
        self.revoked[ident] = max(self.revoked.get(ident, 0.0), until)
        self.version += 1

    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        # No await in between: atomic on the event loop.
        self._claims.pop_expired(now)  # expired claims go first (a heap: only those are read)
        if key in self._claims.until:
            return False
        self._claims.set(key, now + ttl)
        return True
