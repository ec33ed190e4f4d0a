"""The Redis store's revocation semantics, on a real redis-server: the same as SQLite's."""

import pytest

from forwardauth.state import open_store
from harness.redis import RedisServer

pytestmark = pytest.mark.redis


async def test_epochs_rise_and_reset(tmp_path):
    with RedisServer(tmp_path) as server:
        store = open_store(server.url)
        await store.open()
        try:
            v0 = await store.revocation_version()
            assert await store.set_epoch("alice", 100.0) == 100.0
            assert await store.set_epoch("alice", 50.0) == 100.0  # never lowered
            await store.reset_epoch("alice", 10.0)  # unlock: explicit
            await store.revoke("sid-1", 500.0)
            snap = await store.revocations(now=200.0)
            assert snap.epochs == {"alice": 10.0}
            assert snap.revoked == {"sid-1": 500.0}
            assert snap.version == v0 + 4
        finally:
            await store.close()


async def test_claim_once_is_one_set_nx_with_an_expiry_and_an_outage_is_store_unavailable(tmp_path):
    from forwardauth.state.base import StoreUnavailable

    with RedisServer(tmp_path) as server:
        store = open_store(server.url)
        await store.open()
        try:
            assert await store.claim_once("oidc-state:abc", 600.0, 0.0) is True
            assert await store.claim_once("oidc-state:abc", 600.0, 0.0) is False
            assert await store.r.get("forwardauth:once:oidc-state:abc") == "1"
            assert 599_000 <= await store.r.pttl("forwardauth:once:oidc-state:abc") <= 600_000  # Redis's clock
            server.stop()
            with pytest.raises(StoreUnavailable) as exc:
                await store.claim_once("oidc-state:def", 600.0, 0.0)
            assert str(exc.value) == "redis unreachable (ConnectionError)"
        finally:
            await store.close()
