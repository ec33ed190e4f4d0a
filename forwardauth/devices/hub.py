"""Waking waiting long-polls: one hub per process, fed by the store's change feed.

Cost model (10,000 waiting polls on one worker): a waiting poll is one
`Waiter` (slots), one future and one timer handle on the event loop, no task
of its own and no per-poll store subscription. What runs per *process* is
one feed follower (a SQLite change-counter poller a few times a second, or
one Redis pub/sub connection) and one reaper that notices closed client
connections once a second. A change for a user wakes only that user's polls.

Writers on this process also wake their own process's polls directly
(`Hub.wake`), so a device waiting on the same worker answers within the same
event-loop turn; the feed carries the change to the other workers and
replicas (within the follower's interval, 0.2 s by default for SQLite).

The client going away: aiohttp (without handler cancellation, the default)
keeps running a handler whose client has closed its connection. The reaper
asks each waiter's `alive()` (the transport is still open) and ends the
polls whose client is gone: the waiter leaves the hub, its timer is
cancelled, nothing is kept. With handler cancellation on, the poll's task is
cancelled instead and the same `finally` cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import Awaitable, Callable

from forwardauth.devices.longpoll import LongPoll, Reply, Snapshot
from forwardauth.devices.store import PulledChanges, PushedChanges

log = logging.getLogger("forwardauth.devices")


class Signal(enum.IntEnum):
    """Why a waiter woke. A higher value wins over a lower one not yet seen."""

    NONE = 0
    TIMER = 1
    CHANGED = 2
    SUPERSEDED = 3  # a newer poll of the same device
    GONE = 4  # the client closed its connection


class Waiter:
    __slots__ = ("user", "key", "alive", "signal", "_fut", "__weakref__")

    def __init__(self, user: str, key: str, alive: Callable[[], bool]) -> None:
        self.user = user
        self.key = key  # one waiting poll per key (the device id)
        self.alive = alive
        self.signal = Signal.NONE
        self._fut: asyncio.Future[None] | None = None

    def arm(self) -> None:
        """Before each look at the store: forget a change already being read.
        (An ending, superseded or gone, is never forgotten.)"""
        if self.signal < Signal.SUPERSEDED:
            self.signal = Signal.NONE

    def wake(self, signal: Signal) -> None:
        if signal > self.signal:
            self.signal = signal
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, delay: float) -> Signal:
        """Until woken or `delay` seconds pass; a wake since `arm` returns at once."""
        if self.signal is not Signal.NONE:
            return self.signal
        if delay <= 0:
            return Signal.TIMER
        loop = asyncio.get_running_loop()
        fut = self._fut = loop.create_future()
        timer = loop.call_later(delay, _fire, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._fut = None
        return self.signal if self.signal is not Signal.NONE else Signal.TIMER


def _fire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Hub:
    """The waiting polls of this process, by user, then by device."""

    def __init__(self, polls_per_user: int = 10, reap_interval: float = 1.0, pull_interval: float = 0.2) -> None:
        self.polls_per_user = polls_per_user
        self.reap_interval = reap_interval
        self.pull_interval = pull_interval
        self._by_user: dict[str, dict[str, Waiter]] = {}
        self._count = 0
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return self._count

    def watch(self, user: str, key: str, alive: Callable[[], bool]) -> Waiter | None:
        """A waiter for a new poll; None when the user has `polls_per_user`
        waiting already (the caller answers 429). An older poll with the same
        key (the same device reconnecting) is superseded, not counted."""
        slot = self._by_user.setdefault(user, {})
        old = slot.pop(key, None)
        if old is not None:
            self._count -= 1
            old.wake(Signal.SUPERSEDED)
        if len(slot) >= self.polls_per_user:
            if not slot:
                del self._by_user[user]
            return None
        w = slot[key] = Waiter(user, key, alive)
        self._count += 1
        return w

    def unwatch(self, waiter: Waiter) -> None:
        slot = self._by_user.get(waiter.user)
        if slot is not None and slot.get(waiter.key) is waiter:
            del slot[waiter.key]
            self._count -= 1
            if not slot:
                del self._by_user[waiter.user]

    def wake(self, user: str) -> None:
        slot = self._by_user.get(user)
        if slot:
            for w in list(slot.values()):
                w.wake(Signal.CHANGED)

    def wake_all(self) -> None:
        for slot in list(self._by_user.values()):
            for w in list(slot.values()):
                w.wake(Signal.CHANGED)

    def end_all(self) -> None:
        """Answer every waiting poll now (304, as if superseded): on shutdown,
        so the server stops at once instead of after the longest poll, and
        each device re-polls (another replica, or this one once back)."""
        for slot in list(self._by_user.values()):
            for w in list(slot.values()):
                w.wake(Signal.SUPERSEDED)

    def reap(self) -> int:
        """End the polls whose client has gone; how many."""
        gone = 0
        for slot in list(self._by_user.values()):
            for w in list(slot.values()):
                if w.signal < Signal.GONE and not w.alive():
                    w.wake(Signal.GONE)
                    gone += 1
        return gone

    # --- background tasks (started and stopped with the app) -------------------------
    def start(self, feed: PulledChanges | PushedChanges | None) -> None:
        """The reaper, and the follower of `feed` (None: one process, the
        local wakes are all there is)."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._reaper(), name="devices-reaper"))
        if isinstance(feed, PushedChanges):
            self._tasks.append(loop.create_task(self._follow_pushed(feed), name="devices-feed"))
        elif isinstance(feed, PulledChanges):
            self._tasks.append(loop.create_task(self._follow_pulled(feed), name="devices-feed"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            if self._count:
                self.reap()

    async def _follow_pulled(self, feed: PulledChanges) -> None:
        cursor: int | None = None
        delay = self.pull_interval
        failing_since: float | None = None
        while True:
            try:
                new, users = await feed.changes_since(cursor)
            except Exception as exc:  # noqa: BLE001 - the store may fail in any way; the follower must live on
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("device change feed: cannot read the state store (%s); retrying",
                                type(exc).__name__)
                delay = min(delay * 2, 5.0)
            else:
                if failing_since is not None:
                    log.info("device change feed: state store readable again")
                    failing_since = None
                if cursor is None or users is None:
                    self.wake_all()  # first cursor, or fell behind: changes may have been missed
                else:
                    for u in users:
                        self.wake(u)
                cursor, delay = new, self.pull_interval
            await asyncio.sleep(delay)

    async def _follow_pushed(self, feed: PushedChanges) -> None:
        async for user in feed.subscribe_changes():
            if user is None:
                self.wake_all()
            else:
                self.wake(user)


class Busy(Exception):
    """The user has `polls_per_user` polls waiting on this process already."""


async def run_poll(hub: Hub, user: str, key: str, alive: Callable[[], bool], if_none_match: str | None,
                   timeout: float, snapshot: Callable[[], Awaitable[Snapshot]],
                   clock: Callable[[], float] = time.time) -> Reply | None:
    """Drive one LongPoll to its end: the reply, or None when the client went
    away (nothing to write). Raises Busy. The waiter is registered *before*
    the first look, so a change between the look and the wait is not lost."""
    poll = LongPoll(if_none_match, clock(), timeout)
    waiter = hub.watch(user, key, alive)
    if waiter is None:
        raise Busy(user)
    timer_at = 0.0
    try:
        while True:
            waiter.arm()
            snap = await snapshot()
            # A timer may fire a hair early by the wall clock (the loop keeps
            # monotonic time): the look is at the time it was set for, at least,
            # so an expiry or the deadline is never looked at again and again.
            step = poll.look(snap, max(clock(), timer_at))
            if isinstance(step, Reply):
                return step
            signal = await waiter.wait(step.until - clock())
            if signal is Signal.GONE:
                poll.client_gone()
                return None
            if signal is Signal.SUPERSEDED:
                return poll.superseded()
            timer_at = step.until if signal is Signal.TIMER else 0.0
    finally:
        hub.unwatch(waiter)
