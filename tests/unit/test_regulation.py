"""Regulation: counters per user and per client, bans that expire, same for unknown users,
attempts counted before they are checked (parallel bursts get no more tries)."""

import asyncio

import pytest

from forwardauth.services.regulation import RegulationConfig, Regulator, client_key, failure_store, user_key

CFG = RegulationConfig(max_failures=3, max_client_failures=5, window=60, ban_time=300)
T = 1_000_000.0


@pytest.fixture
def store(any_store):
    return any_store  # memory, SQLite and Redis in turn (tests/conftest.py)


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


@pytest.mark.parametrize("client", [None, "192.0.2.1"])
async def test_unknown_and_known_users_are_counted_alike(store, client):
    """The regulator never looks the user up: an unknown name is banned exactly like a known one.
    Time moves forward between failures, as it does; without an address there is no shared
    per-address counter that would ban the second name early."""
    reg = Regulator(failure_store(store), RegulationConfig(max_failures=3, max_client_failures=50, window=60,
                                                           ban_time=300))
    out = {}
    for k, name in enumerate(("alice", "no-such-user")):
        out[name] = [(await reg.failed(name, client, T + 10 * k + i)).banned for i in range(3)]
    assert out["alice"] == out["no-such-user"] == [False, False, True]
    assert (await reg.check("zed", client, T + 25)).banned is False


async def test_attempts_without_an_address_do_not_share_a_counter(store):
    """CFG allows 5 per address: six usernames failing once each from unknown addresses ban nobody."""
    reg = Regulator(failure_store(store), CFG)
    for i in range(6):
        assert (await reg.failed(f"user{i}", None, T + i)).banned is False
    assert (await reg.check("user9", None, T + 7)).banned is False


async def test_a_parallel_burst_gets_only_max_failures_tries(store):
    """40 attempts at once for one username: at most max_failures (3) get a ticket (fewer, down to none,
    when an attempt's count is read after later ones were recorded: never more), the rest are refused
    before anything is checked, and the ban is on."""
    reg = Regulator(failure_store(store), CFG)
    results = await asyncio.gather(*(reg.reserve("alice", f"192.0.2.{i}", T + (i % 7) * 0.001) for i in range(40)))
    tickets = [t for _, t in results if t is not None]
    assert len(tickets) <= 3
    assert all(v.banned and 299 < v.retry_after <= 300 for v, t in results if t is None)
    assert (await reg.check("alice", "198.51.100.1", T + 1)).banned is True


async def test_a_parallel_burst_from_one_address_gets_only_max_client_failures_tries(store):
    reg = Regulator(failure_store(store), CFG)
    results = await asyncio.gather(*(reg.reserve(f"user{i}", "192.0.2.1", T) for i in range(30)))
    assert sum(1 for _, t in results if t is not None) <= 5
    assert (await reg.check("someone-else", "192.0.2.1", T + 1)).banned is True


async def test_entries_stamped_a_little_later_still_count(store):
    """Parallel requests take their clocks at slightly different moments: an attempt stamped
    earlier but counted later still sees the ones stamped after it."""
    reg = Regulator(failure_store(store), CFG)
    for i in range(3):
        _, t = await reg.reserve("alice", None, T + 5 - i)  # later stamps first
        assert t is not None and t.user_count == i + 1
    verdict, t = await reg.reserve("alice", None, T)
    assert t is None and verdict.banned


async def test_the_last_allowed_failure_starts_the_ban_and_a_success_clears(store):
    reg = Regulator(failure_store(store), CFG)
    _, t1 = await reg.reserve("alice", "192.0.2.1", T)
    assert (await reg.passed(t1, T + 0.5)).banned is False  # right: the count is cleared
    tickets = [(await reg.reserve("alice", "192.0.2.1", T + 1 + i))[1] for i in range(3)]
    assert [t.user_count for t in tickets] == [1, 2, 3]
    assert (await reg.failed(tickets[0])).banned is False
    assert (await reg.failed(tickets[1])).banned is False
    third = await reg.failed(tickets[2])
    assert third.banned and third.retry_after == 300
    assert (await reg.check("alice", None, T + 5)).banned is True


async def test_a_success_after_a_parallel_ban_is_refused(store):
    """A right password checked while a parallel attempt started the ban does not get through."""
    reg = Regulator(failure_store(store), CFG)
    _, right = await reg.reserve("alice", "192.0.2.1", T)
    others = [(await reg.reserve("alice", "192.0.2.1", T + 0.1 * (i + 1)))[1] for i in range(2)]
    await reg.failed(others[0])
    assert (await reg.failed(others[1])).banned is True
    verdict = await reg.passed(right, T + 1)
    assert verdict.banned is True and 0 < verdict.retry_after <= 300


async def test_successes_from_one_address_do_not_add_up(store):
    """People behind one NAT signing in: 20 successes from one address never reach the per-address limit (5)."""
    reg = Regulator(failure_store(store), CFG)
    for i in range(20):
        _, t = await reg.reserve(f"user{i}", "192.0.2.1", T + i)
        assert t is not None, i
        assert (await reg.passed(t, T + i)).banned is False
    for i in range(4):  # four failures: still under 5
        _, t = await reg.reserve(f"x{i}", "192.0.2.1", T + 30 + i)
        assert (await reg.failed(t)).banned is False
    _, t = await reg.reserve("x9", "192.0.2.1", T + 40)
    assert t.client_count == 5 and (await reg.failed(t)).banned is True


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
    (None, None),  # unknown address: counted per username only
    ("not-an-ip", None),
])
def test_client_keys(client, key):
    assert client_key(client) == key


def test_user_key_is_bounded():
    assert user_key("a" * 1000) == "user:" + "a" * 256
