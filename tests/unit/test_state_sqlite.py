"""The SQLite store's revocation semantics: epochs only rise, except an explicit reset."""

import pytest

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


# --- a state file that cannot be opened -----------------------------------------------------


def _blocked(tmp_path):
    """A state path whose directory cannot be made: its parent is a file."""
    (tmp_path / "afile").write_text("")
    return tmp_path / "afile" / "sub" / "state.db"


async def test_a_directory_that_cannot_be_made_is_store_unavailable(tmp_path):
    import pytest

    from forwardauth.state.base import StoreUnavailable

    path = _blocked(tmp_path)
    store = SQLiteStore(str(path))
    with pytest.raises(StoreUnavailable) as exc:
        await store.open()
    assert str(exc.value) == (f"sqlite state {path}: cannot create its directory {path.parent}: Not a directory")
    with pytest.raises(StoreUnavailable) as exc:  # the CLI's way in too
        store.run_sync(lambda c: None)
    assert str(exc.value) == (f"sqlite state {path}: cannot create its directory {path.parent}: Not a directory")
    await store.close()


def test_the_clis_say_so_in_one_line(tmp_path, capsys):
    """`tokens` and `accounts`: one line on stderr, exit 2, no traceback."""
    from forwardauth.cli import main

    path = _blocked(tmp_path)
    assert main(["keys", "generate", "-o", str(tmp_path / "keys.json")]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server: {{listen: 127.0.0.1:4999, public_url: http://127.0.0.1:4999}}\n"
                   f"keys: {{file: {tmp_path / 'keys.json'}}}\nstate: sqlite://{path}\n"
                   "levels: [{name: password}]\npolicy: {default: deny}\n")
    capsys.readouterr()
    expected = (f"forwardauth: state store: sqlite state {path}: cannot create its directory {path.parent}: "
                "Not a directory\n")
    for command in (["tokens", "list"], ["accounts", "list"]):
        assert main([*command, "-c", str(cfg)]) == 2
        out = capsys.readouterr()
        assert (out.out, out.err) == ("", expected)


# --- purging ------------------------------------------------------------------------------


async def test_an_old_state_file_gains_the_expiry_column_and_keeps_its_rows(tmp_path):
    """auth_failures had no `expires` before: opening adds it; the old rows stay
    (their window is unknown, so the sweep leaves them) until their key records again."""
    import sqlite3

    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE auth_failures (key TEXT NOT NULL, at REAL NOT NULL, id TEXT NOT NULL PRIMARY KEY);"
                      "INSERT INTO auth_failures VALUES ('user:old', 1000.0, 'a'), ('ban:user:old', 1000.0, 'b');")
    old.close()
    store, other = SQLiteStore(str(path)), SQLiteStore(str(path))
    await store.open()
    await other.open()  # a second process opening the upgraded file: nothing to do
    try:
        cols = await store.run(lambda c: [r[1] for r in c.execute("PRAGMA table_info(auth_failures)")])
        assert cols == ["key", "at", "id", "expires"]
        assert await store.failures("ban:user:old", 1100.0, 900.0) == (1, 1000.0)
        await store.record_failure("user:new", 5000.0, 60.0)  # sweeps what has an expiry: none of the old
        rows = await store.run(lambda c: c.execute("SELECT key, at, expires FROM auth_failures ORDER BY key").fetchall())
        assert rows == [("ban:user:old", 1000.0, None), ("user:new", 5000.0, 5060.0), ("user:old", 1000.0, None)]
        await store.record_failure("user:old", 5000.0, 60.0)  # its key again: the per-key trim
        assert await store.failures("user:old", 5000.0, 4500.0) == (1, 5000.0)
    finally:
        await store.close()
        await other.close()


async def test_expired_claims_are_deleted_through_the_expiry_index(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        plan = await store.run(lambda c: c.execute(
            "EXPLAIN QUERY PLAN DELETE FROM once_claims WHERE expires <= 1").fetchall())
        assert "USING INDEX once_claims_expires" in " ".join(r[-1] for r in plan)
        plan = await store.run(lambda c: c.execute(
            "EXPLAIN QUERY PLAN DELETE FROM auth_failures WHERE expires <= 1").fetchall())
        assert "USING INDEX auth_failures_expires" in " ".join(r[-1] for r in plan)
        assert await store.claim_once("k1", 60.0, 1000.0) is True
        assert await store.claim_once("k2", 600.0, 1000.0) is True
        assert await store.claim_once("k3", 60.0, 1060.0) is True  # k1 expired at 1060: deleted
        keys = await store.run(lambda c: [k for (k,) in c.execute("SELECT key FROM once_claims ORDER BY key")])
        assert keys == ["k2", "k3"]
        assert await store.claim_once("k2", 600.0, 1599.0) is False
    finally:
        await store.close()


# --- write failures keep their real cause ------------------------------------------------


def _writes():
    """Every write of the SQLite store, each given a key `k` big enough to need new pages."""
    from forwardauth.state.records import Account, SealedCreds, TokenMeta

    big = "x" * 1500
    return {
        "set_epoch": lambda s, k: s.set_epoch(big + k, 1.0),
        "reset_epoch": lambda s, k: s.reset_epoch(big + k, 1.0),
        "revoke": lambda s, k: s.revoke(big + k, 9e12),
        "claim_once": lambda s, k: s.claim_once(big + k, 60.0, 1000.0),
        "add_account": lambda s, k: s.add_account(Account("a" + k, display_name="d" * 250, email="e" * 250)),
        "put_account": lambda s, k: s.put_account(Account("p" + k, display_name="d" * 250, email="e" * 250)),
        "record_failure": lambda s, k: s.record_failure(big + k, 1000.0, 60.0),
        "put_token": lambda s, k: s.put_token(TokenMeta(k, big, big, "k1", "password", 1.0, 2.0, "root")),
        "put_dbcreds": lambda s, k: s.put_dbcreds(big + k, SealedCreds(big, 1.0, "root")),
    }


@pytest.mark.parametrize("write", sorted(_writes()))
async def test_a_full_disk_is_reported_as_such(tmp_path, write):
    """Issue 14: after SQLITE_FULL SQLite has already rolled the transaction back,
    so a blind ROLLBACK raised "cannot rollback - no transaction is active" and
    hid the cause. The store says the disk is full, and works again once there is room."""
    from forwardauth.state.base import StoreUnavailable

    store = SQLiteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        pages = await store.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store.run(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())
        fn = _writes()[write]
        with pytest.raises(StoreUnavailable) as exc:
            for i in range(200):
                await fn(store, f"{i:04d}")
        assert str(exc.value) == f"sqlite state {tmp_path / 's.db'}: OperationalError: database or disk is full"
        assert not await store.run(lambda c: c.in_transaction)
        await store.run(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchone())
        await fn(store, "again")  # room again: the same connection writes
        assert await store.revocation_version() >= 0
    finally:
        await store.close()
