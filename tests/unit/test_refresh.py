"""The one refresh loop (`forwardauth.state.refresh.Refresher`): it keeps every
in-memory snapshot of the store fresh (revocations and the token index), on
its interval and at once when the store announces a change; a failure of one
snapshot, of any kind, neither stops the loop nor the other snapshot."""

from __future__ import annotations

import asyncio
import logging
import time

from forwardauth.state.base import StoreUnavailable
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account, TokenMeta
from forwardauth.state.refresh import Refresher
from forwardauth.state.revocations import Revocations
from forwardauth.tokens.index import TokenIndex


def meta(i: int) -> TokenMeta:
    return TokenMeta(f"00000000-0000-4000-8000-{i:012d}", "bob", f"t{i}", "k1", "password", 1.0, 9e12, "root")


def both(store) -> tuple[Refresher, Revocations, TokenIndex]:
    """What the app context and the tokens part set up: revocations first, then the index."""
    rev, index, loop = Revocations(), TokenIndex(), Refresher()
    loop.add(lambda: rev.refresh(store))
    loop.add(lambda: index.refresh(store, full_every=3600.0))
    return loop, rev, index


async def until(check, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_one_loop_keeps_both_snapshots_fresh():
    store = MemoryStore()
    await store.add_account(Account("bob"))
    loop, rev, index = both(store)
    assert rev.unreachable_for() == index.unreachable_for() == float("inf")  # never loaded: refused
    await loop.refresh()
    assert rev.unreachable_for() == index.unreachable_for() == 0.0 and index.account("bob").active
    task = asyncio.get_running_loop().create_task(loop.run(store, 0.01))
    try:
        await store.revoke("sid-1", time.time() + 60)
        await store.put_token(meta(1))
        await until(lambda: "sid-1" in rev.snapshot.revoked and index.token(meta(1).id) is not None)
    finally:
        task.cancel()


async def test_a_store_notification_refreshes_at_once():
    """Redis announces changes (pub/sub): the loop does not wait for its interval."""

    class Announcing(MemoryStore):
        def subscribe(self, callback):
            self.announce = callback

    store = Announcing()
    loop, rev, index = both(store)
    task = asyncio.get_running_loop().create_task(loop.run(store, 3600.0))
    try:
        await until(lambda: hasattr(store, "announce"))
        await store.revoke("sid-1", time.time() + 60)
        await store.put_token(meta(1))
        store.announce()
        await until(lambda: "sid-1" in rev.snapshot.revoked and index.token(meta(1).id) is not None)
    finally:
        task.cancel()


async def test_the_loop_survives_unexpected_exceptions_in_both_snapshots():
    """Audit finding: only StoreUnavailable was caught, so anything else killed the task silently."""
    calls = {"rev": 0, "tok": 0}

    class Flaky(MemoryStore):
        async def revocation_version(self):
            calls["rev"] += 1
            if calls["rev"] <= 2:
                raise RuntimeError("boom")
            return await super().revocation_version()

        async def tokens_version(self):
            calls["tok"] += 1
            if calls["tok"] <= 2:
                raise KeyError("boom")
            return await super().tokens_version()

    store = Flaky()
    loop, rev, index = both(store)
    task = asyncio.get_running_loop().create_task(loop.run(store, 0.01))
    try:
        await until(lambda: rev.last_ok is not None and index.last_ok is not None)
        assert calls["rev"] >= 3 and calls["tok"] >= 3 and not task.done()
        assert rev.last_error is None and index.last_error is None
        assert rev.unreachable_for() == index.unreachable_for() == 0.0
    finally:
        task.cancel()


async def test_one_snapshot_failing_leaves_the_other_fresh_and_counts_as_stale():
    class TokensDown(MemoryStore):
        async def tokens_version(self):
            raise StoreUnavailable("redis unreachable (ConnectionError)")

    store = TokensDown()
    loop, rev, index = both(store)
    await loop.refresh()
    await store.revoke("sid-1", time.time() + 60)
    await loop.refresh()
    assert "sid-1" in rev.snapshot.revoked and rev.unreachable_for() == 0.0
    assert index.last_error == "redis unreachable (ConnectionError)" and index.unreachable_for() == float("inf")


async def test_a_job_that_raises_past_its_guard_is_logged_and_the_next_still_runs(caplog):
    ran: list[str] = []

    async def broken() -> None:
        raise ValueError("fa1_notatoken")

    async def fine() -> None:
        ran.append("fine")

    loop = Refresher()
    loop.add(broken)
    loop.add(fine)
    with caplog.at_level(logging.ERROR, logger="forwardauth.state"):
        await loop.refresh()
    assert ran == ["fine"]
    assert "refresh failed: unexpected ValueError at test_refresh.py:" in caplog.text
    assert "fa1_notatoken" not in caplog.text


async def test_the_server_runs_one_loop_for_both_snapshots():
    """One loop per process: one subscription to the store's changes (there were
    two loops, each subscribed), both snapshots loaded before the first request,
    and one notification refreshes both."""
    from aiohttp.test_utils import TestClient, TestServer

    from forwardauth.composition import build_app
    from forwardauth.core.runtime import Runtime
    from forwardauth.tokens.api.auth import TOKENS
    from forwardauth.web.context import CTX

    from .conftest import make_config

    class Announcing(MemoryStore):
        def __init__(self):
            super().__init__()
            self.subscribers = []

        def subscribe(self, callback):
            self.subscribers.append(callback)

    store = Announcing()
    await store.add_account(Account("bob"))
    await store.put_token(meta(1))
    await store.revoke("sid-1", time.time() + 60)
    app = build_app(Runtime.build(make_config("policy: {default: deny}\n")), store)
    async with TestClient(TestServer(app, host="127.0.0.1")):
        ctx = app[CTX]
        index = app[TOKENS].index
        assert "sid-1" in ctx.revocations.snapshot.revoked and index.token(meta(1).id) is not None
        await until(lambda: store.subscribers)
        await asyncio.sleep(0.1)
        assert len(store.subscribers) == 1
        await store.revoke("sid-2", time.time() + 60)
        await store.put_token(meta(2))
        store.subscribers[0]()
        await until(lambda: "sid-2" in ctx.revocations.snapshot.revoked and index.token(meta(2).id) is not None)
