"""Redis Sentinel: a real primary, a replica and three redis-sentinel
processes on loopback; two forwardauth replicas on a redis+sentinel:// URL.
The primary is SIGKILLed while decisions (cookie and bearer token, on both
replicas) and revocations flow: revocations made before the failover hold
after it, decisions keep answering within the grace, and no forwardauth
process needs a restart (a revocation made after the failover reaches both).
"""

from __future__ import annotations

import json
import time

import pytest

from harness.client import request
from harness.flow import Flow
from harness.sentinel import SentinelSetup
from harness.tokens import TokenServer

pytestmark = pytest.mark.redis
GRACE = 15.0


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    with SentinelSetup(tmp_path_factory.mktemp("sentinel")) as s:
        yield s


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, sentinel):
    work = tmp_path_factory.mktemp("sentinel-replicas")
    opts = {"state": sentinel.url, "refresh": "1s", "tokens": {"stale_grace": f"{GRACE:.0f}s", "index_refresh": "30s"}}
    a, b = TokenServer(work, **opts), TokenServer(work, **opts)
    a.account("root", roles="admin")
    a.account("svc", kind="system")
    a.account("alice")
    a.cli("state", "ack")
    with a, b:
        yield a, b


def test_failover_while_decisions_and_revocations_flow(replicas, sentinel):
    a, b = replicas
    pids = (a.proc.popen.pid, b.proc.popen.pid)
    admin = a.token("root", "--name", "admin")
    tok_ok = a.token("svc")
    tok_gone = a.token("alice", "--name", "gone")
    cookie_ok = a.cli("session", "issue", "--user", "bob", "--level", "password").strip()
    cookie_gone = a.cli("session", "issue", "--user", "carol", "--level", "password").strip()
    # Revocations made just before the failover: a token through the API, a user through the CLI.
    gone_id = json.loads(a.cli("tokens", "inspect", tok_gone))["token_id"]
    deadline = time.monotonic() + 5
    while a.api("GET", "/api/v1/tokens", admin).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert a.api("DELETE", f"/api/v1/tokens/{gone_id}", admin).status == 200
    a.cli("session", "revoke", "--user", "carol")

    checks = {}
    for name, fa in (("a", a), ("b", b)):
        checks[f"{name}:cookie"] = lambda fa=fa: fa.decide("/api/x", cookie=cookie_ok).status
        checks[f"{name}:token"] = lambda fa=fa: fa.decide("/api/x", tok_ok).status
        checks[f"{name}:revoked-cookie"] = lambda fa=fa: fa.decide("/api/x", cookie=cookie_gone).status
        checks[f"{name}:revoked-token"] = lambda fa=fa: fa.decide("/api/x", tok_gone).status
    with Flow(checks) as flow:
        for name in ("a", "b"):
            flow.wait(f"{name}:cookie", 200, 5)
            flow.wait(f"{name}:token", 200, 5)
            flow.wait(f"{name}:revoked-cookie", 401, 5)
            flow.wait(f"{name}:revoked-token", 401, 5)
        before = sentinel.primary_port()
        killed_at = flow.now()
        killed = sentinel.kill_primary()
        deadline = time.monotonic() + 30
        while sentinel.primary_port() == before:
            assert time.monotonic() < deadline, "no failover within 30 s"
            time.sleep(0.1)
        promoted_at = flow.now()
        # No restart: a revocation made after the failover reaches both replicas.
        revoked_at = flow.now()
        a.cli("session", "revoke", "--user", "bob")
        flow.wait("a:cookie", 401, 10, since=revoked_at)
        flow.wait("b:cookie", 401, 10, since=revoked_at)
        fresh = a.token("alice", "--name", "after-failover")  # (svc holds one token at a time)
        deadline = time.monotonic() + 10
        while not (a.decide("/api/x", fresh).status == b.decide("/api/x", fresh).status == 200):
            assert time.monotonic() < deadline, "a token issued after the failover is not accepted by both"
            time.sleep(0.05)
        time.sleep(1.0)
    report = (f"killed primary {killed} at {killed_at:.1f}s, new primary at {promoted_at:.1f}s "
              f"({promoted_at - killed_at:.1f}s); {flow.table()}")
    print(report)
    for name in ("a", "b"):
        # revocations made before the failover hold, before, during and after it
        assert flow.statuses(f"{name}:revoked-cookie") == {401}, report
        assert flow.statuses(f"{name}:revoked-token") == {401}, report
        # decisions keep answering within the grace: no 5xx, no unanswered request
        assert flow.statuses(f"{name}:token") == {200}, report
        assert flow.statuses(f"{name}:cookie", until=revoked_at) == {200}, report
        assert max(x.took for x in flow.of(f"{name}:token")) < 2.0, report
    assert promoted_at - killed_at < GRACE
    for fa in (a, b):
        assert request(fa.port, "/readyz", host="auth.test").status == 200
    assert (a.proc.popen.pid, b.proc.popen.pid) == pids and a.proc.popen.poll() is None and b.proc.popen.poll() is None


async def test_the_device_feed_follows_the_primary_through_sentinel(sentinel):
    """Device approval's pub/sub (a device waiting on one replica, woken by a write on another)
    on a redis+sentinel:// URL: the feed's client finds the primary as the store's does. Run
    after the failover above, so the primary it finds is the promoted replica."""
    import asyncio

    from forwardauth.state.records import Device
    from forwardauth.state.redis import RedisStore

    store = RedisStore(sentinel.url)
    await store.open()
    feed = store.subscribe_changes()
    try:
        assert await asyncio.wait_for(feed.__anext__(), 10) is None  # connected
        assert await store.add_device(Device("sentinel-dev-0001", "dora", "phone", time.time(), "h"), 5)
        assert await asyncio.wait_for(feed.__anext__(), 5) == "dora"
        await store.set_epoch("dora", time.time())  # a revocation wakes the user's polls too
        assert await asyncio.wait_for(feed.__anext__(), 5) == "dora"
        assert await store.remove_devices("dora") == 1  # (then WAIT for a replica, as revocations do)
        assert await asyncio.wait_for(feed.__anext__(), 5) == "dora"
    finally:
        await feed.aclose()
        await store.remove_devices("dora")
        await store.close()
