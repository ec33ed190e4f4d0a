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


async def test_a_revoke_trims_only_what_has_expired(tmp_path):
    """Audit finding: each revoke deleted entries older than until - 400 days, so
    revoking a long-lived token dropped live per-session revocations."""
    import time

    store = SQLiteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        now = time.time()
        await store.revoke("session-live", now + 3600)  # a cookie session, alive for an hour
        await store.revoke("expired", now - 10)  # kept until the next write, then trimmed
        await store.revoke("token-long", now + 500 * 86400)  # a token with a 500-day life
        snap = await store.revocations(now)
        assert set(snap.revoked) == {"session-live", "token-long"}
        revoked = await store.run(lambda c: dict(c.execute("SELECT ident, until FROM revoked").fetchall()))
        assert set(revoked) == {"session-live", "token-long"}  # the expired one is gone from the file too
    finally:
        await store.close()
