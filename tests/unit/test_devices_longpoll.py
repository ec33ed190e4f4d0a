"""The long-poll: the pure state machine, then the hub that drives it (ETag
changes, timeout, expiry, client gone without leaks, superseded polls, the
per-user limit) and the change-feed followers that carry a change from one
process's store write to another process's waiting poll."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import weakref
from dataclasses import replace

import pytest

from forwardauth.devices import hub as hub_mod
from forwardauth.devices.approvals import etag, new_request
from forwardauth.devices.hub import Busy, Hub, Signal, run_poll
from forwardauth.devices.longpoll import LongPoll, Phase, Reply, Snapshot, Wait
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import ApprovalState, Device

T = 1_700_000_000.0
EMPTY = etag([])


def request(user="alice", now=T, ttl=120.0):
    return new_request(user, "app.example.com", "/", "192.0.2.1", "UA", "mfa", now, ttl)


# --- the pure state machine -----------------------------------------------------

def test_no_etag_answers_at_once_even_with_nothing_pending():
    p = LongPoll(None, T, 50)
    assert p.look(Snapshot(True, ()), T) == Reply(200, EMPTY, ())
    assert p.phase is Phase.ANSWERED


def test_a_different_etag_answers_at_once_with_the_live_requests():
    r1, r2 = request(now=T - 1), request(now=T)
    gone = replace(request(now=T - 5), state=ApprovalState.APPROVED)
    p = LongPoll(EMPTY, T, 50)
    assert p.look(Snapshot(True, (r2, gone, r1)), T) == Reply(200, etag([r1, r2]), (r1, r2))


def test_same_etag_waits_until_the_deadline_then_304_with_the_same_etag():
    r = request(ttl=600)
    p = LongPoll(etag([r]), T, 50)
    assert p.look(Snapshot(True, (r,)), T) == Wait(T + 50)
    assert p.look(Snapshot(True, (r,)), T + 20) == Wait(T + 50)  # a spurious wake: still nothing new
    assert p.look(Snapshot(True, (r,)), T + 50) == Reply(304, etag([r]))


def test_waits_no_longer_than_the_first_expiry_and_then_the_set_has_changed():
    r = request(now=T - 100, ttl=120)  # expires at T + 20
    p = LongPoll(etag([r]), T, 50)
    assert p.look(Snapshot(True, (r,)), T) == Wait(T + 20)
    assert p.look(Snapshot(True, (r,)), T + 20) == Reply(200, EMPTY, ())


def test_star_matches_whatever_exists():
    p = LongPoll("*", T, 50)
    assert p.look(Snapshot(True, ()), T) == Wait(T + 50)


def test_device_no_longer_valid_is_401_at_once():
    p = LongPoll(EMPTY, T, 50)
    assert p.look(Snapshot(False, ()), T) == Reply(401)


def test_superseded_is_304_and_client_gone_ends_without_an_answer():
    p = LongPoll(EMPTY, T, 50)
    p.look(Snapshot(True, ()), T)
    assert p.superseded() == Reply(304, EMPTY)
    q = LongPoll(EMPTY, T, 50)
    q.look(Snapshot(True, ()), T)
    q.client_gone()
    assert q.phase is Phase.ENDED
    with pytest.raises(RuntimeError, match="look\\(\\) on a poll that is ended"):
        q.look(Snapshot(True, ()), T)


# --- the hub driving polls --------------------------------------------------------

class Conn:
    """A client connection as the hub sees it (aiohttp: request.protocol)."""

    def __init__(self) -> None:
        self.connected = True


class Rig:
    """One process: a store, a hub, a device of alice's."""

    def __init__(self, store: MemoryStore | None = None, **hub_kw):
        self.store = store or MemoryStore()
        self.hub = Hub(**hub_kw)
        self.conn = Conn()

    async def add_device(self, dev_id="dev-1", user="alice"):
        await self.store.add_device(Device(dev_id, user, "phone", time.time(), "h"), 10)

    async def snapshot(self, dev_id="dev-1", user="alice") -> Snapshot:
        ok = await self.store.device(dev_id) is not None
        return Snapshot(ok, tuple(await self.store.pending(user, time.time())))

    def poll(self, inm, timeout=5.0, dev_id="dev-1", user="alice", conn=None):
        return asyncio.ensure_future(run_poll(self.hub, user, dev_id, conn or self.conn, inm, timeout,
                                              self.snapshot, dev_id, user))


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiting_poll_answers_when_a_request_appears_and_when_it_goes_away():
    rig = Rig()
    await rig.add_device()
    task = rig.poll(EMPTY)
    await settle()
    assert not task.done() and len(rig.hub) == 1
    r = request(now=time.time())
    t0 = time.perf_counter()
    await rig.store.create_request(r, time.time())
    rig.hub.wake("alice")
    reply = await asyncio.wait_for(task, 1)
    assert time.perf_counter() - t0 < 0.05
    assert reply == Reply(200, etag([r]), (r,)) and len(rig.hub) == 0

    task = rig.poll(reply.etag)
    await settle()
    assert not task.done()
    await rig.store.resolve(r.id, ApprovalState.DENIED, "denied_on_device", time.time())
    rig.hub.wake("alice")
    assert await asyncio.wait_for(task, 1) == Reply(200, EMPTY, ())


async def test_a_wake_for_another_user_or_with_nothing_new_keeps_waiting():
    rig = Rig()
    await rig.add_device()
    task = rig.poll(EMPTY, timeout=0.3)
    await settle()
    rig.hub.wake("bob")
    rig.hub.wake("alice")  # spurious: nothing changed
    await settle()
    assert not task.done()
    t0 = time.perf_counter()
    assert await asyncio.wait_for(task, 2) == Reply(304, EMPTY)
    assert 0.15 < time.perf_counter() - t0 < 0.6


async def test_timeout_is_304_with_the_same_etag():
    rig = Rig()
    await rig.add_device()
    t0 = time.perf_counter()
    assert await rig.poll(EMPTY, timeout=0.2) == Reply(304, EMPTY)
    assert 0.19 < time.perf_counter() - t0 < 0.5


async def test_an_expiring_request_ends_the_wait_at_its_expiry():
    rig = Rig()
    await rig.add_device()
    r = request(now=time.time(), ttl=0.3)
    await rig.store.create_request(r, time.time())
    t0 = time.perf_counter()
    reply = await asyncio.wait_for(rig.poll(etag([r]), timeout=5), 2)
    assert reply == Reply(200, EMPTY, ()) and 0.25 < time.perf_counter() - t0 < 0.8


async def test_removing_the_device_ends_its_poll_with_401():
    rig = Rig()
    await rig.add_device()
    task = rig.poll(EMPTY)
    await settle()
    await rig.store.remove_device("dev-1")
    rig.hub.wake("alice")
    assert await asyncio.wait_for(task, 1) == Reply(401)


async def test_client_gone_ends_the_poll_within_the_reap_interval_and_leaves_nothing():
    tasks_before = len(asyncio.all_tasks())
    rig = Rig(reap_interval=0.05)
    await rig.add_device()
    conn = Conn()
    task = rig.poll(EMPTY, timeout=30, conn=conn)
    await settle()
    assert len(rig.hub) == 1
    conn.connected = False
    assert await asyncio.wait_for(task, 1) is None
    del task
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert len(rig.hub) == 0 and rig.hub._by_user == {} and gone() is None  # the connection is not kept
    await rig.hub.stop()
    assert len(asyncio.all_tasks()) == tasks_before


async def test_polls_answered_early_do_not_pile_up_in_the_timer_heap():
    rig = Rig()
    await rig.add_device()
    for _ in range(2000):
        task = rig.poll(EMPTY, timeout=30)
        await settle()
        rig.hub.end_all()
        assert await task == Reply(304, EMPTY)
    assert len(rig.hub._timers) <= 2 * 257
    await rig.hub.stop()


async def test_cancelling_the_poll_task_leaves_nothing():
    """aiohttp with handler cancellation cancels the handler instead."""
    rig = Rig()
    await rig.add_device()
    task = rig.poll(EMPTY, timeout=30)
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rig.hub) == 0 and rig.hub._by_user == {}


async def test_many_polls_whose_clients_go_away_do_not_grow_memory():
    rig = Rig(reap_interval=0.01)
    await rig.add_device()

    async def round_(n):
        conn = Conn()
        tasks = [rig.poll(EMPTY, timeout=30, dev_id=f"d{i}", user=f"u{i}", conn=conn) for i in range(n)]
        await settle()
        conn.connected = False
        assert await asyncio.gather(*tasks) == [None] * n
        del tasks
        await asyncio.sleep(0.02)  # callbacks still queued on the loop let go of the tasks

    for i in range(500):
        await rig.add_device(f"d{i}", f"u{i}")
    await round_(500)  # warm up caches and free lists
    tracemalloc.start()
    # Two traced rounds first, so that the base holds what a round leaves
    # until collected and the timer heap's steady state of stale entries.
    await round_(500)
    await round_(500)
    rig.hub.compact()  # the timer heap's stale entries are bounded, and tested on their own below
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(4):
        await round_(500)
    rig.hub.compact()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    await rig.hub.stop()
    assert len(rig.hub) == 0
    assert grown < 50_000, grown  # 2000 polls came and went; a leak of even 25 bytes each would show


async def test_a_newer_poll_of_the_same_device_supersedes_the_older():
    rig = Rig()
    await rig.add_device()
    old = rig.poll(EMPTY)
    await settle()
    new = rig.poll(EMPTY)
    assert await asyncio.wait_for(old, 1) == Reply(304, EMPTY)
    await settle()
    assert not new.done() and len(rig.hub) == 1
    new.cancel()


async def test_polls_per_user_limit():
    rig = Rig(polls_per_user=2)
    for i in range(3):
        await rig.add_device(f"d{i}")
    a, b = rig.poll(EMPTY, dev_id="d0"), rig.poll(EMPTY, dev_id="d1")
    await settle()
    with pytest.raises(Busy):
        await rig.poll(EMPTY, dev_id="d2")
    assert len(rig.hub) == 2
    a.cancel()
    b.cancel()


async def test_waiter_signal_priorities():
    w = hub_mod.Waiter("u", "k", Conn())
    w.wake(Signal.CHANGED)
    w.wake(Signal.TIMER)
    assert w.signal is Signal.CHANGED
    w.arm()
    assert w.signal is Signal.NONE
    w.wake(Signal.GONE)
    w.arm()  # an ending is never forgotten
    assert Hub().timer(w, 10) is None  # so there is nothing to wait for


# --- change feeds: another process's write wakes this process's poll -------------------

@pytest.mark.parametrize("style", ["pulled", "pushed"])
async def test_a_change_written_elsewhere_reaches_a_poll_within_a_second(style, monkeypatch):
    store = MemoryStore()
    if style == "pulled":  # only the counter: as SQLite offers
        monkeypatch.setattr(MemoryStore, "subscribe_changes", None, raising=False)
        monkeypatch.delattr(MemoryStore, "subscribe_changes")
        monkeypatch.delattr(hub_mod.PushedChanges, "subscribe_changes", raising=False)
    here = Rig(store, pull_interval=0.05)
    await here.add_device()
    here.hub.start(store)
    await asyncio.sleep(0.1)  # the follower has its cursor
    task = here.poll(EMPTY)
    await settle()
    r = request(now=time.time())
    t0 = time.perf_counter()
    assert await store.create_request(r, time.time()) is not None  # "another process": no local wake
    reply = await asyncio.wait_for(task, 1)
    assert reply.status == 200 and reply.requests == (r,)
    assert time.perf_counter() - t0 < (0.3 if style == "pulled" else 0.05)
    await here.hub.stop()


class FlakyFeed:
    """A pulled feed that fails for a while, then has purged what was missed."""

    def __init__(self):
        self.calls = 0

    async def publish_change(self, user):
        pass

    async def changes_since(self, cursor):
        self.calls += 1
        if self.calls == 1:
            return 10, []
        if self.calls <= 3:
            raise OSError("database is locked")
        return 20, (None if self.calls == 4 else [])


async def test_pulled_follower_survives_store_errors_and_wakes_everyone_after_falling_behind(caplog):
    rig = Rig(pull_interval=0.01)
    await rig.add_device()
    feed = FlakyFeed()
    task = rig.poll(EMPTY, timeout=30)
    await settle()
    woken: list[str] = []
    rig.hub.wake_all = lambda: woken.append("all")  # type: ignore[method-assign]
    rig.hub.start(feed)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if feed.calls >= 4:
            break
    await rig.hub.stop()
    assert woken == ["all", "all"]  # first cursor, then "fell behind"
    assert "cannot read the state store (OSError)" in caplog.text and "database is locked" not in caplog.text
    task.cancel()
