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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from pathlib import Path

from forwardauth.state.base import RevocationStore, StateStore, StoreUnavailable
from forwardauth.state.records import RevocationSnapshot

log = logging.getLogger("forwardauth.revocation")

# "Lock by deep-future epoch" (seed 001): everything issued before this is dead.
FAR_FUTURE = 253402300799.0  # 9999-12-31T23:59:59Z


def failure(exc: BaseException) -> str:
    """What went wrong, safe to log and show on /readyz: the exception's class
    and where it was raised, never its message (which may hold data read from
    the store, or a URL with a password)."""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}"
    return f"unexpected {exc.__class__.__name__}{where}"


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

    async def refresh(self, store: RevocationStore, now: float | None = None) -> bool:
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
        except Exception as exc:  # a bug or bad data: fail closed, keep trying (never kill the loop)
            self.last_error = failure(exc)
            log.error("revocation refresh failed: %s", self.last_error)
            return False
        self.last_ok = time.monotonic()
        self.last_error = None
        return True

    def unreachable_for(self) -> float:
        """Seconds since the store last answered (0 while it answers)."""
        if self.last_error is None or self.last_ok is None:
            return 0.0 if self.last_ok is not None else float("inf")
        return time.monotonic() - self.last_ok

    async def run(self, store: StateStore, interval: float) -> None:
        """Refresh forever (cancelled at shutdown): every `interval`, and at
        once when a store with change notifications (Redis pub/sub) says so."""
        wake = asyncio.Event()
        store.subscribe(wake.set)
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
            await self.refresh(store)
