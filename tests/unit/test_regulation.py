"""Regulation: counters per user and per client, bans that expire, same for unknown users."""

import pytest

from forwardauth.regulation import RegulationConfig, Regulator, client_key, failure_store, user_key
from forwardauth.state.memory import MemoryStore
from forwardauth.state.sqlite import SQLiteStore

CFG = RegulationConfig(max_failures=3, max_client_failures=5, window=60, ban_time=300)
T = 1_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    await s.open()
    yield s
    await s.close()


async def test_counter_semantics(store):
    fs = failure_store(store)
    assert await fs.failures("k", T, 60) == (0, None)
    assert await fs.record_failure("k", T, 60) == 1
    assert await fs.record_failure("k", T + 10, 60) == 2
    assert await fs.failures("k", T + 10, 60) == (2, T + 10)
    assert await fs.failures("k", T + 60, 60) == (1, T + 10)  # (now-window, now]: T drops out at T+60
    assert await fs.record_failure("k", T + 65, 60) == 2  # T+10 and T+65
    assert await fs.record_failure("k", T + 75, 60) == 2  # T+65 and T+75
    assert await fs.failures("other", T + 75, 60) == (0, None)
    await fs.clear_failures("k")
    assert await fs.failures("k", T + 75, 60) == (0, None)


async def test_ban_after_max_failures_then_expiry(store):
    reg = Regulator(failure_store(store), CFG)
    assert (await reg.check("alice", "192.0.2.1", T)).banned is False
    assert (await reg.failed("alice", "192.0.2.1", T)).banned is False
    assert (await reg.failed("alice", "192.0.2.1", T + 1)).banned is False
    third = await reg.failed("alice", "192.0.2.1", T + 2)
    assert third.banned is True and third.retry_after == 300 and third.minutes == 5
    v = await reg.check("alice", "198.51.100.7", T + 62)  # another address: the username is banned
    assert v.banned is True and v.retry_after == pytest.approx(240) and v.minutes == 4
    assert (await reg.check("bob", "192.0.2.1", T + 62)).banned is False  # the address is not (3 < 5)
    assert (await reg.check("alice", "192.0.2.1", T + 301)).banned is True
    assert (await reg.check("alice", "192.0.2.1", T + 302)).banned is False  # ban over
    # the count started again: one more failure is not a ban
    assert (await reg.failed("alice", "192.0.2.1", T + 303)).banned is False


async def test_failures_outside_the_window_do_not_add_up(store):
    reg = Regulator(failure_store(store), CFG)
    for i in range(10):
        assert (await reg.failed("alice", f"192.0.2.{i}", T + i * 31)).banned is False


async def test_success_clears_the_user_not_the_client(store):
    reg = Regulator(failure_store(store), CFG)
    await reg.failed("alice", "192.0.2.1", T)
    await reg.failed("alice", "192.0.2.1", T + 1)
    await reg.succeeded("alice")
    assert (await reg.failed("alice", "192.0.2.1", T + 2)).banned is False
    # the client's count kept going: 3 so far, two more failures (for anyone) ban the address
    await reg.failed("bob", "192.0.2.1", T + 3)
    assert (await reg.failed("carol", "192.0.2.1", T + 4)).banned is True
    assert (await reg.check("dave", "192.0.2.1", T + 5)).banned is True
    assert (await reg.check("dave", "192.0.2.2", T + 5)).banned is False


async def test_unknown_and_known_users_are_counted_alike(store):
    """The regulator never looks the user up: an unknown name is banned exactly like a known one."""
    reg = Regulator(failure_store(store), CFG)
    out = {}
    for name in ("alice", "no-such-user"):
        out[name] = [(await reg.failed(name, None, T + i)).banned for i in range(3)]
    assert out["alice"] == out["no-such-user"] == [False, False, True]


async def test_unban(store):
    reg = Regulator(failure_store(store), CFG)
    for i in range(3):
        await reg.failed("alice", None, T + i)
    assert (await reg.check("alice", None, T + 3)).banned
    await reg.unban("alice")
    assert not (await reg.check("alice", None, T + 3)).banned


@pytest.mark.parametrize("client, key", [
    ("192.0.2.1", "client:192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "client:2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "client:2001:db8:1:2::/64"),
    ("::ffff:192.0.2.9", "client:192.0.2.9"),
    (None, "client:-"),
    ("not-an-ip", "client:-"),
])
def test_client_keys(client, key):
    assert client_key(client) == key


def test_user_key_is_bounded():
    assert user_key("a" * 1000) == "user:" + "a" * 256
