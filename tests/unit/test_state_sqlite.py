"""The SQLite store's revocation semantics: epochs only rise, except an explicit reset."""

from forwardauth.state.sqlite import SQLiteStore


async def test_epochs_rise_and_reset(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
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
        assert (await store.revocations(now=600.0)).revoked == {}
    finally:
        await store.close()
