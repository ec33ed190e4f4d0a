"""In-memory snapshots of the store, and the one loop that keeps them fresh.

Decisions never wait on the store: each process reads snapshots held in
memory (revocations: `forwardauth.state.revocations.Revocations`; tokens and
accounts: `forwardauth.tokens.index.TokenIndex`), and one background task,
`Refresher.run`, refreshes them all: every `revocation_refresh`, and at once
when the store announces a change (Redis pub/sub).

Each snapshot keeps its own health (`last_ok`, `last_error`,
`unreachable_for()`), read by /readyz and `tokens.stale_grace`. A refresh
that fails for any reason (the store down, a bad record, a bug) counts as a
failure: the snapshot keeps what it had, reports stale, is logged, and the
loop carries on. It never dies silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from forwardauth.state.base import StateStore, StoreUnavailable

log = logging.getLogger("forwardauth.state")


def failure(exc: BaseException) -> str:
    """What went wrong, safe to log and show on /readyz: the exception's class
    and where it was raised, never its message (which may hold data read from
    the store, or a URL with a password)."""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}"
    return f"unexpected {exc.__class__.__name__}{where}"


class Snapshot:
    """The health of one in-memory view of the store. Subclasses load in
    `refresh()` through `_guarded`, which records the outcome."""

    what: ClassVar[str] = "refresh"  # for the log: "<what> failed: ..."
    log: ClassVar[logging.Logger] = log

    def __init__(self) -> None:
        self.last_ok: float | None = None  # monotonic time the store last answered
        self.last_error: str | None = None  # why the latest refresh failed; None after a good one

    async def _guarded(self, load: Callable[[], Awaitable[None]]) -> bool:
        """Run `load()`; True when it completed. A StoreUnavailable is logged
        once per distinct message (a store down for an hour is one line);
        anything else is logged every time, by class and place only."""
        try:
            await load()
        except StoreUnavailable as exc:
            if self.last_error != str(exc):
                self.log.warning("%s failed: %s", self.what, exc)
            self.last_error = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug or bad data: fail closed, keep trying
            self.last_error = failure(exc)
            self.log.error("%s failed: %s", self.what, self.last_error)
            return False
        self.last_ok = time.monotonic()
        self.last_error = None
        return True

    def unreachable_for(self) -> float:
        """Seconds since the store last answered: 0 while it answers, inf if it never did."""
        if self.last_ok is None:
            return float("inf")
        if self.last_error is None:
            return 0.0
        return time.monotonic() - self.last_ok


class Refresher:
    """The one background refresh of every snapshot of a process. Parts add a
    job (`add`) when the app is built; the server's lifecycle runs `refresh()`
    once at start, then `run()` until shutdown."""

    def __init__(self) -> None:
        self._jobs: list[Callable[[], Awaitable[object]]] = []

    def add(self, job: Callable[[], Awaitable[object]]) -> None:
        """`job()` refreshes one snapshot (and records its own failures); jobs run in the order added."""
        self._jobs.append(job)

    async def refresh(self) -> None:
        """Every job once, in order. One failing (even past its own guard) never stops the others."""
        for job in list(self._jobs):
            try:
                await job()
            except Exception as exc:  # noqa: BLE001 - one failing job never stops the others
                log.error("refresh failed: %s", failure(exc))

    async def run(self, store: StateStore, interval: float) -> None:
        """Refresh forever (cancelled at shutdown): every `interval`, and at once
        when the store says something changed."""
        wake = asyncio.Event()
        store.subscribe(wake.set)
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
            await self.refresh()
