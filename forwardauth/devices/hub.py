"""Waking waiting long-polls: one hub per process, fed by the store's change feed.

Cost model (10,000 waiting polls on one worker): a waiting poll is one
`Waiter` (slots), one future and one entry in the hub's timer heap; no task,
no event-loop timer and no store subscription of its own. Objects matter
twice here: for memory, and because every object a waiting poll keeps alive
sits in the collector's oldest generation, which a full collection walks
while the whole process stands still. (An event-loop timer per poll would
cost a handle, a timer and a copied context each.)

What runs per *process*: one ticker (fires due timeouts every `tick`
seconds, 0.1 s by default, so a 304 comes at most that late, and ends the
polls whose client has gone every `reap_interval`), and one feed follower (a
SQLite change-counter poller a few times a second, or one Redis pub/sub
connection). A change for a user wakes only that user's polls.

Writers on this process also wake its polls directly (`Hub.wake`), so a
device waiting on the same worker answers within the same event-loop turn;
the feed carries the change to the other workers and replicas (within the
follower's interval, 0.2 s by default for SQLite).

The client going away: aiohttp (without handler cancellation, the default)
keeps running a handler whose client has closed its connection. The ticker
reads each waiter's `conn.connected` (aiohttp's protocol object has it) and
ends the polls whose client is gone: the waiter leaves the hub, nothing is
kept. With handler cancellation on, the poll's task is cancelled instead
and the same `finally` cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from forwardauth.devices.longpoll import LongPoll, Reply, Snapshot, Wait
from forwardauth.state.base import PulledChanges, PushedChanges

log = logging.getLogger("forwardauth.devices")


class Connection(Protocol):
    """What the hub asks of a poll's client connection (aiohttp: request.protocol)."""

    @property
    def connected(self) -> bool: ...


class _Closed:
    connected = False


CLOSED: Connection = _Closed()  # what a waiter holds once its poll has ended


class Signal(enum.IntEnum):
    """Why a waiter woke. A higher value wins over a lower one not yet seen."""

    NONE = 0
    TIMER = 1
    CHANGED = 2
    SUPERSEDED = 3  # a newer poll of the same device, or the server stopping
    GONE = 4  # the client closed its connection


class Waiter:
    __slots__ = ("user", "key", "conn", "signal", "fut", "until", "__weakref__")

    def __init__(self, user: str, key: str, conn: Connection) -> None:
        self.user = user
        self.key = key  # one waiting poll per key (the device id)
        self.conn = conn
        self.signal = Signal.NONE
        self.fut: asyncio.Future[None] | None = None
        self.until = 0.0  # loop time the current wait ends (the ticker's heap has it too)

    def arm(self) -> None:
        """Before each look at the store: forget a change already being read.
        (An ending, superseded or gone, is never forgotten.)"""
        if self.signal < Signal.SUPERSEDED:
            self.signal = Signal.NONE

    def wake(self, signal: Signal) -> None:
        if signal > self.signal:
            self.signal = signal
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)


class Hub:
    """The waiting polls of this process, by user, then by device."""

    def __init__(self, polls_per_user: int = 10, reap_interval: float = 1.0, pull_interval: float = 0.2,
                 tick: float = 0.1) -> None:
        self.polls_per_user = polls_per_user
        self.reap_interval = reap_interval
        self.pull_interval = pull_interval
        self.tick = min(tick, reap_interval)
        self._by_user: dict[str, dict[str, Waiter]] = {}
        self._count = 0
        # (loop time, sequence, waiter). An entry goes stale when its poll
        # ends or waits again; stale entries are skipped when they come due,
        # and dropped all at once when they outnumber the live ones (a poll
        # answered early must not keep its waiter for the rest of its timeout).
        self._timers: list[tuple[float, int, Waiter]] = []
        self._stale = 0
        self._seq = itertools.count()
        self._ticker: asyncio.Task[None] | None = None
        self._feed: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return self._count

    def watch(self, user: str, key: str, conn: Connection) -> Waiter | None:
        """A waiter for a new poll; None when the user has `polls_per_user`
        waiting already (the caller answers 429). An older poll with the same
        key (the same device reconnecting) is superseded, not counted."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="devices-ticker")
        slot = self._by_user.setdefault(user, {})
        old = slot.pop(key, None)
        if old is not None:
            self._count -= 1
            old.wake(Signal.SUPERSEDED)
        if len(slot) >= self.polls_per_user:
            if not slot:
                del self._by_user[user]
            return None
        w = slot[key] = Waiter(user, key, conn)
        self._count += 1
        return w

    def unwatch(self, waiter: Waiter) -> None:
        waiter.fut = None
        waiter.conn = CLOSED  # nothing keeps the client's connection once its poll has ended
        if waiter.until:
            self._went_stale()
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
        self._wake_every(Signal.CHANGED)

    def end_all(self) -> None:
        """Answer every waiting poll now (304, as if superseded): on shutdown,
        so the server stops at once instead of after the longest poll, and
        each device re-polls (another replica, or this one once back)."""
        self._wake_every(Signal.SUPERSEDED)

    def _wake_every(self, signal: Signal) -> None:
        for slot in list(self._by_user.values()):
            for w in list(slot.values()):
                w.wake(signal)

    def reap(self) -> int:
        """End the polls whose client has gone; how many."""
        gone = 0
        for slot in list(self._by_user.values()):
            for w in list(slot.values()):
                if w.signal < Signal.GONE and not w.conn.connected:
                    w.wake(Signal.GONE)
                    gone += 1
        return gone

    def timer(self, waiter: Waiter, delay: float) -> asyncio.Future[None] | None:
        """A future that `waiter`'s wake, or about `delay` seconds (up to
        `tick` later), completes; None when there is nothing to wait for (a
        wake since its `arm`, or no time left). A future, not a coroutine:
        one object fewer kept per waiting poll."""
        if waiter.signal is not Signal.NONE or delay <= 0:
            return None
        loop = asyncio.get_running_loop()
        if waiter.until:
            self._went_stale()  # its earlier entry, from before a wake with nothing new
        waiter.until = loop.time() + delay
        heapq.heappush(self._timers, (waiter.until, next(self._seq), waiter))
        fut = waiter.fut = loop.create_future()
        return fut

    def fire_due(self, now: float) -> None:
        """Wake the waiters whose wait ended by `now` (loop time)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            until, _, w = heapq.heappop(timers)
            if w.until == until:
                w.until = 0.0  # no entry any more
                if w.fut is not None and not w.fut.done():
                    w.fut.set_result(None)
            else:
                self._stale = max(0, self._stale - 1)

    def _went_stale(self) -> None:
        self._stale += 1
        if self._stale > 256 and 2 * self._stale > len(self._timers):
            self.compact()

    def compact(self) -> None:
        """Drop the timer entries of polls that have ended or wait again."""
        self._timers = [e for e in self._timers if e[2].until == e[0] and e[2].conn is not CLOSED]
        heapq.heapify(self._timers)
        self._stale = 0

    # --- background tasks ----------------------------------------------------------------
    def start(self, feed: PulledChanges | PushedChanges | None) -> None:
        """The follower of `feed` (None: one process, the local wakes are all
        there is). The ticker starts with the first poll."""
        loop = asyncio.get_running_loop()
        if isinstance(feed, PushedChanges):
            self._feed = loop.create_task(self._follow_pushed(feed), name="devices-feed")
        elif isinstance(feed, PulledChanges):
            self._feed = loop.create_task(self._follow_pulled(feed), name="devices-feed")

    async def stop(self) -> None:
        for t in (self._ticker, self._feed):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._ticker = self._feed = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + self.reap_interval
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            self.fire_due(now)
            if now >= next_reap:
                next_reap = now + self.reap_interval
                if self._count:
                    self.reap()

    async def _follow_pulled(self, feed: PulledChanges) -> None:
        cursor: int | None = None
        delay = self.pull_interval
        failing = False
        while True:
            try:
                new, users = await feed.changes_since(cursor)
            except Exception as exc:  # noqa: BLE001 - the store may fail in any way; the follower must live on
                if not failing:
                    failing = True
                    log.warning("device change feed: cannot read the state store (%s); retrying",
                                type(exc).__name__)
                delay = min(delay * 2, 5.0)
            else:
                if failing:
                    log.info("device change feed: state store readable again")
                    failing = False
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


async def run_poll(hub: Hub, user: str, key: str, conn: Connection, if_none_match: str | None, timeout: float,
                   snapshot: Callable[..., Awaitable[Snapshot]], *args: Any,
                   clock: Callable[[], float] = time.time) -> Reply | None:
    """Drive one LongPoll to its end: the reply, or None when the client went
    away (nothing to write). `snapshot(*args)` reads the store. Raises Busy.
    The waiter is registered *before* the first look, so a change between
    the look and the wait is not lost."""
    poll = LongPoll(if_none_match, clock(), timeout)
    waiter = hub.watch(user, key, conn)
    if waiter is None:
        raise Busy(user)
    timer_at = 0.0
    try:
        while True:
            waiter.arm()
            # A timer fires by loop time, possibly a hair early by the wall
            # clock: the look is at the time it was set for, at least, so an
            # expiry or the deadline is never looked at again and again.
            step: Reply | Wait | None = poll.look(await snapshot(*args), max(clock(), timer_at))
            if isinstance(step, Reply):
                return step
            assert step is not None
            until, step = step.until, None  # keep nothing but the time while waiting
            fut = hub.timer(waiter, until - clock())
            if fut is not None:
                try:
                    await fut
                finally:
                    waiter.fut = fut = None
            signal = waiter.signal if waiter.signal is not Signal.NONE else Signal.TIMER
            if signal is Signal.GONE:
                poll.client_gone()
                return None
            if signal is Signal.SUPERSEDED:
                return poll.superseded()
            timer_at = until if signal is Signal.TIMER else 0.0
    finally:
        hub.unwatch(waiter)
