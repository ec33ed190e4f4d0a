"""DeviceStore: memory, SQLite and a real Redis must agree (state/base.py
says what). Then two store objects on one backend, as two worker processes
or two replicas have: one live request per user holds across them, and a
change written through one wakes a poll waiting on a hub fed by the other."""

from __future__ import annotations

import asyncio
import time

import pytest

from forwardauth.devices.approvals import etag, new_request
from forwardauth.devices.hub import Hub, run_poll
from forwardauth.devices.longpoll import Snapshot
from forwardauth.state.base import KEEP_DECIDED, DeviceStore, PulledChanges, PushedChanges
from forwardauth.state.records import ApprovalState, Device, Pairing

T = time.time()


@pytest.fixture(autouse=True)
def _now():
    """Each test's "now": Redis expires keys on its own clock, so a time taken
    when the module was imported (minutes earlier in a full run) is too old."""
    global T
    T = time.time()


@pytest.fixture
def store(any_store):
    assert isinstance(any_store, DeviceStore)
    return any_store  # memory, SQLite and Redis in turn (tests/conftest.py)


def dev(i: int, user: str = "alice", created: float = 100.0) -> Device:
    return Device(f"device-{i:09d}", user, f"phone {i}", created + i, f"hash{i}")


def req(user: str = "alice", now: float | None = None, ttl: float = 120.0):
    return new_request(user, "app.example.com", "/x", "192.0.2.1", "UA", "mfa", T if now is None else now, ttl)


# --- devices --------------------------------------------------------------------------

async def test_devices(store):
    assert await store.add_device(dev(2), 2) is True
    assert await store.add_device(dev(1), 2) is True
    assert await store.add_device(dev(3), 2) is False  # alice has 2
    assert await store.add_device(dev(3, "bob"), 2) is True
    assert [d.id for d in await store.devices("alice")] == [dev(1).id, dev(2).id]  # oldest first
    assert await store.device(dev(1).id) == dev(1)
    assert await store.device("nope") is None
    await store.touch_device(dev(1).id, 5000.5)
    await store.touch_device("nope", 5000.5)  # nothing happens
    assert (await store.device(dev(1).id)).last_seen == 5000.5
    assert await store.remove_device(dev(1).id) == Device(dev(1).id, "alice", "phone 1", 101.0, "hash1", 5000.5)
    assert await store.remove_device(dev(1).id) is None
    assert await store.remove_devices("alice") == 1
    assert await store.remove_devices("alice") == 0
    assert await store.devices("alice") == [] and len(await store.devices("bob")) == 1


async def test_concurrent_adds_never_pass_the_limit(store):
    results = await asyncio.gather(*(store.add_device(dev(i), 3) for i in range(10)))
    assert sum(results) == 3 and len(await store.devices("alice")) == 3


# --- pairing codes ------------------------------------------------------------------------

async def test_pairings(store):
    await store.put_pairing("h1", Pairing("alice", T, T + 60))
    assert await store.pairing("h1", T + 1) == Pairing("alice", T, T + 60)
    assert await store.pairing("h1", T + 60) is None  # expired
    assert await store.pairing("h2", T) is None
    await store.drop_pairing("h1")
    assert await store.pairing("h1", T + 1) is None


# --- approval requests -----------------------------------------------------------------------

async def test_one_live_request_per_user(store):
    r1 = req()
    assert await store.create_request(r1, T) == r1
    assert await store.create_request(req(), T + 1) is None
    assert await store.create_request(req("bob"), T + 1) is not None
    assert await store.request(r1.id) == r1
    assert [r.id for r in await store.pending("alice", T + 1)] == [r1.id]
    resolved = await store.resolve(r1.id, ApprovalState.DENIED, "denied_on_device", T + 2, "device-1")
    assert (resolved.state, resolved.reason, resolved.decided, resolved.device_id) == (
        ApprovalState.DENIED, "denied_on_device", T + 2, "device-1")
    assert await store.request(r1.id) == resolved and await store.pending("alice", T + 2) == []
    r2 = req(now=T + 3)
    assert await store.create_request(r2, T + 3) == r2  # the slot is free once resolved


async def test_an_expired_request_does_not_block_and_expires_once(store):
    r1 = req(now=T, ttl=0.5)
    assert await store.create_request(r1, T) is not None
    await asyncio.sleep(0.6)  # Redis expires its slot on its own clock
    now = T + 1
    assert [r.id for r in await store.pending("alice", now)] == [r1.id]  # still PENDING until expired
    assert await store.resolve(r1.id, ApprovalState.APPROVED, None, now) is None  # not live
    r2 = req(now=now)
    assert await store.create_request(r2, now) is not None
    expired = await store.expire_request(r1.id, now)
    assert expired.state is ApprovalState.EXPIRED and expired.decided == now
    assert await store.expire_request(r1.id, now) is None
    assert await store.expire_request(r2.id, now) is None  # not past its expiry
    assert [r.id for r in await store.pending("alice", now)] == [r2.id]


async def test_concurrent_creations_and_resolutions_have_one_winner(store):
    results = await asyncio.gather(*(store.create_request(req(), T) for _ in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    rid = winners[0].id
    done = await asyncio.gather(store.resolve(rid, ApprovalState.APPROVED, None, T + 1, "a"),
                                store.resolve(rid, ApprovalState.DENIED, "denied_on_device", T + 1, "b"),
                                store.resolve(rid, ApprovalState.CANCELLED, "cancelled_in_browser", T + 1))
    assert sum(d is not None for d in done) == 1
    with pytest.raises(ValueError, match="resolve\\(\\) to expired"):
        await store.resolve(rid, ApprovalState.EXPIRED, None, T + 1)


async def test_a_decided_request_is_kept_past_its_expiry(store):
    r = req(now=T, ttl=1)
    await store.create_request(r, T)
    await store.resolve(r.id, ApprovalState.APPROVED, None, T + 0.5, "d")
    assert KEEP_DECIDED >= 60
    assert (await store.request(r.id)).state is ApprovalState.APPROVED


# --- the change feed ----------------------------------------------------------------------------

def feed_writes(store, tag: str) -> list:
    """(what, write, the user it must publish); users named by `tag`, so
    that each pass (memory offers both feed styles) starts afresh."""
    u = [f"{tag}{i}" for i in range(7)]
    return [
        ("add_device", lambda: store.add_device(dev(1, u[0]), 5), u[0]),
        ("remove_device", lambda: store.remove_device(dev(1, u[0]).id), u[0]),
        ("remove_devices", lambda: store.remove_devices(u[1]), u[1]),  # its device is added before
        ("create_request", lambda: store.create_request(req(u[2]), time.time()), u[2]),
        ("set_epoch", lambda: store.set_epoch(u[3], T), u[3]),
        ("reset_epoch", lambda: store.reset_epoch(u[4], 0.0), u[4]),
        ("publish_change", lambda: store.publish_change(u[5]), u[5]),
    ]


async def test_every_change_is_on_the_feed(store):
    assert isinstance(store, (PulledChanges, PushedChanges))
    if isinstance(store, PulledChanges):
        await store.add_device(dev(2, "pull1"), 5)
        cursor, users = await store.changes_since(None)
        assert users == []
        for what, write, user in feed_writes(store, "pull"):
            await write()
            cursor, users = await store.changes_since(cursor)
            assert users == [user], what
        assert await store.changes_since(cursor) == (cursor, [])
    if isinstance(store, PushedChanges):
        await store.add_device(dev(2, "push1"), 5)
        feed = store.subscribe_changes()
        assert await asyncio.wait_for(feed.__anext__(), 5) is None  # connected
        for what, write, user in feed_writes(store, "push"):
            await write()
            assert await asyncio.wait_for(feed.__anext__(), 2) == user, what
        await feed.aclose()


async def test_resolving_is_on_the_feed_but_expiring_is_not(store):
    r1, r2 = req("u1", ttl=0.3), req("u2")
    await store.create_request(r1, T)
    await store.create_request(r2, T)
    if isinstance(store, PulledChanges):
        cursor, _ = await store.changes_since(None)
        await store.resolve(r2.id, ApprovalState.APPROVED, None, T + 0.1)
        await store.expire_request(r1.id, T + 1)
        assert (await store.changes_since(cursor))[1] == ["u2"]


async def test_sqlite_follower_that_fell_behind_is_told_so(tmp_path):
    from forwardauth.state.sqlite import SQLiteStore

    s = SQLiteStore(str(tmp_path / "state.db"))
    await s.open()
    cursor, _ = await s.changes_since(None)
    await s.publish_change("a")
    await s.publish_change("b")
    await s.run(lambda c: c.execute("DELETE FROM device_changes"))  # as if purged after FEED_KEEP
    assert await s.changes_since(cursor) == (cursor + 2, None)
    await s.publish_change("c")
    assert await s.changes_since(cursor + 2) == (cursor + 3, ["c"])
    await s.close()


# --- two processes / replicas ----------------------------------------------------------------------

@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def two(request, tmp_path):
    """Two store objects on one SQLite file or one Redis."""
    if request.param == "sqlite":
        from forwardauth.state.sqlite import SQLiteStore

        a, b = SQLiteStore(str(tmp_path / "s.db")), SQLiteStore(str(tmp_path / "s.db"))
    else:
        from forwardauth.state.redis import RedisStore

        url = request.getfixturevalue("shared_redis").url
        a, b = RedisStore(url), RedisStore(url)
    await a.open()
    await b.open()
    if request.param == "redis":
        await a.r.flushdb()
    yield a, b
    await a.close()
    await b.close()


async def test_one_live_request_per_user_across_stores(two):
    a, b = two
    results = await asyncio.gather(*(s.create_request(req(), T) for s in (a, b, a, b)))
    assert sum(r is not None for r in results) == 1


async def test_a_write_through_one_store_wakes_a_poll_on_the_others_hub(two):
    a, b = two
    await a.add_device(dev(1), 5)
    hub_b = Hub(pull_interval=0.05)
    hub_b.start(b)

    class Conn:
        connected = True

    async def snapshot() -> Snapshot:
        return Snapshot(await b.device(dev(1).id) is not None, tuple(await b.pending("alice", time.time())))

    await asyncio.sleep(0.3)  # the follower is following (first cursor, or subscribed)
    poll = asyncio.ensure_future(run_poll(hub_b, "alice", dev(1).id, Conn(), etag([]), 30, snapshot))
    await asyncio.sleep(0.1)
    r = req(now=time.time())
    t0 = time.perf_counter()
    await a.create_request(r, time.time())  # "another process": nothing wakes hub_b but the feed
    reply = await asyncio.wait_for(poll, 2)
    elapsed = time.perf_counter() - t0
    assert reply.status == 200 and [x.id for x in reply.requests] == [r.id]
    assert elapsed < 1.0, elapsed
    poll = asyncio.ensure_future(run_poll(hub_b, "alice", dev(1).id, Conn(), reply.etag, 30, snapshot))
    await asyncio.sleep(0.1)
    await a.set_epoch("alice", time.time())  # a lock or `session revoke` through the other store
    await a.remove_device(dev(1).id)
    assert (await asyncio.wait_for(poll, 2)).status == 401
    await hub_b.stop()
