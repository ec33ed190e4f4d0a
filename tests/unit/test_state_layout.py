"""state/ owns persistence: it depends on no other part of forwardauth, and a
store creates every table it needs by itself, whatever was imported before.

Both are checked in a fresh interpreter: in the test process every module has
long been imported, which is exactly what hid the missing tables."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_state_imports_no_other_part_of_forwardauth():
    """tokens (and accounts, regulation, ...) depend on state, never the reverse; state may use
    the pure core below it (e.g. core.jsonstrict for stored JSON)."""
    loaded = _run("""
        import sys
        import forwardauth.state, forwardauth.state.sqlite, forwardauth.state.memory, forwardauth.state.redis
        import forwardauth.state.refresh
        print(" ".join(sorted(m for m in sys.modules if m.startswith("forwardauth.")
                              and not m.startswith(("forwardauth.state", "forwardauth.core")))))
    """)
    assert loaded.split() == []


def test_a_sqlite_store_opened_alone_creates_every_table(tmp_path):
    """Latent bug: the token tables and the `tokens_version` row were added by
    `tokens.store` at its import, so a store opened without it had neither,
    and the version bump of every account write updated nothing."""
    path = tmp_path / "state.db"
    _run(f"""
        import asyncio, sys
        from forwardauth.state.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.open()
            await store.close()

        asyncio.run(main())
        assert not [m for m in sys.modules if m.startswith(("forwardauth.tokens", "forwardauth.webauthn"))]
    """)
    with sqlite3.connect(path) as c:
        tables = {name for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    assert tables == {"meta", "epochs", "revoked", "accounts", "auth_failures", "once_claims", "api_tokens",
                      "dbcreds", "webauthn_credentials", "devices", "device_pairings", "approval_requests", "device_changes",
                      "sqlite_sequence"}  # (SQLite's own, for the device_changes counter)
    assert meta == {"revocation_version": 0, "tokens_version": 0}
    # An account write in a process that never imported the tokens part moves the token version.
    _run(f"""
        import asyncio, sys
        from forwardauth.state.records import Account
        from forwardauth.state.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.open()
            assert await store.add_account(Account("alice")) is True
            assert await store.tokens_version() == 1
            await store.close()

        asyncio.run(main())
        assert not [m for m in sys.modules if m.startswith("forwardauth.tokens")]
    """)
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT value FROM meta WHERE key='tokens_version'").fetchone() == (1,)
