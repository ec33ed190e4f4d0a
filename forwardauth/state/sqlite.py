"""SQLite state: the embedded default. WAL mode, so several worker processes
and the CLI share one file safely.

All SQL runs on one dedicated thread per store: sqlite3 connections are not
shared across threads, and the event loop never waits on the disk. The store
creates every table it holds when it opens (`SCHEMA` and the devices'
tables from `sqlite_devices`, then `_upgrade` for files made by older
versions); nothing else adds to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from forwardauth.state.base import SWEEP_GRACE, StateStore, StoreUnavailable
from forwardauth.state.records import Account, RevocationSnapshot, SealedCreds, TokenMeta
from forwardauth.state.sqlite_devices import SCHEMA as DEVICES_SCHEMA
from forwardauth.state.sqlite_devices import SQLiteDevices, publish

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revocation_version', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('tokens_version', 0);
CREATE TABLE IF NOT EXISTS epochs (user TEXT PRIMARY KEY, epoch REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (ident TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    username TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    display_name TEXT,
    email TEXT,
    groups_json TEXT NOT NULL,
    status TEXT NOT NULL,
    password_hash TEXT,
    totp_secret_enc TEXT,
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL,
    id TEXT NOT NULL PRIMARY KEY,
    expires REAL
);
CREATE INDEX IF NOT EXISTS auth_failures_key_at ON auth_failures (key, at);
CREATE TABLE IF NOT EXISTS once_claims (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS once_claims_expires ON once_claims (expires);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    level TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    created_by TEXT NOT NULL,
    last_used REAL,
    revoked REAL
);
CREATE INDEX IF NOT EXISTS api_tokens_account ON api_tokens (account);
CREATE TABLE IF NOT EXISTS dbcreds (
    account TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    updated REAL NOT NULL,
    updated_by TEXT NOT NULL
);
"""


@contextlib.contextmanager
def transaction(c: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction around the block: committed when it ends, rolled back when it raises.

    `write` takes the write lock up front (BEGIN IMMEDIATE), so a writer never
    has to upgrade a read lock halfway (which can fail with SQLITE_BUSY);
    `write=False` is a deferred BEGIN, for reads that must see one snapshot.

    What propagates is always the first error. After SQLITE_FULL, an I/O error
    and a few others SQLite has already rolled the transaction back itself, and
    a ROLLBACK then fails with "cannot rollback - no transaction is active":
    raised from here, that hid the cause ("database or disk is full"). So roll
    back only a transaction still open, and a failed rollback only adds a note.
    """
    c.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield c
        c.execute("COMMIT")
    except BaseException as exc:
        if c.in_transaction:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error as again:
                exc.add_note(f"the rollback failed too: {again.__class__.__name__}: {again}")
        raise


def _upgrade(c: sqlite3.Connection) -> None:
    """Bring a state file made by an older version up to SCHEMA: auth_failures
    gained `expires` (recorded at + window, so entries of keys that never come
    back can be swept) and its index. Rows from before have no `expires`:
    they go when their key records again (the per-key trim), never by the sweep,
    whose window they do not carry."""
    with transaction(c):  # two processes opening an old file: one adds the column
        cols = {row[1] for row in c.execute("PRAGMA table_info(auth_failures)")}
        if "expires" not in cols:
            c.execute("ALTER TABLE auth_failures ADD COLUMN expires REAL")
        c.execute("CREATE INDEX IF NOT EXISTS auth_failures_expires ON auth_failures (expires)")


def _bump_revocations(c: sqlite3.Connection) -> None:
    c.execute("UPDATE meta SET value = value + 1 WHERE key='revocation_version'")


def _bump_tokens(c: sqlite3.Connection) -> None:
    """Token writes and account writes: each process's token index then learns
    new tokens, revocations, locks and group changes at its next tick."""
    c.execute("UPDATE meta SET value = value + 1 WHERE key='tokens_version'")


_ACCOUNT_COLUMNS = ("username, kind, display_name, email, groups_json, status, password_hash, totp_secret_enc, "
                    "totp_last_step, created, updated")
_TOKEN_COLUMNS = "id, account, name, key_id, level, created, expires, created_by, last_used, revoked"


def _account_row(a: Account) -> tuple[Any, ...]:
    return (a.username, a.kind, a.display_name, a.email, json.dumps(list(a.groups)), a.status, a.password_hash,
            a.totp_secret_enc, a.totp_last_step, a.created, a.updated)


def _account(row: tuple[Any, ...]) -> Account:
    return Account(username=row[0], kind=row[1], display_name=row[2], email=row[3], groups=tuple(json.loads(row[4])),
                   status=row[5], password_hash=row[6], totp_secret_enc=row[7], totp_last_step=int(row[8]),
                   created=float(row[9]), updated=float(row[10]))


class SQLiteStore(SQLiteDevices, StateStore):
    def __init__(self, path: str):
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    # --- plumbing -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                parent = Path(self.path).parent
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(f"sqlite state {self.path}: cannot create its directory {parent}: "
                                           f"{exc.strerror or exc.__class__.__name__}") from None
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.executescript(SCHEMA + DEVICES_SCHEMA)
                _upgrade(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """On the store's thread: every failure of the file is StoreUnavailable, naming the path."""
        try:
            return fn(self._connect())
        except sqlite3.Error as exc:
            self._drop_if_stuck()
            raise StoreUnavailable(f"sqlite state {self.path}: {exc.__class__.__name__}: {exc}") from None
        except OSError as exc:  # the file or its directory (sqlite3 reports most as sqlite3.Error)
            self._drop_if_stuck()
            raise StoreUnavailable(f"sqlite state {self.path}: {exc.strerror or exc.__class__.__name__}") from None

    def _drop_if_stuck(self) -> None:
        """A connection left inside a transaction (its rollback failed too) would
        refuse every later BEGIN: close it, the next call opens a new one."""
        if self._conn is not None and self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one write transaction on the store's thread."""

        def tx(c: sqlite3.Connection) -> T:
            with transaction(c):
                return fn(c)

        return await self.run(tx)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For the CLI: same as run, without an event loop."""
        return self._pool.submit(self._call, fn).result()

    async def open(self) -> None:
        await self.run(lambda c: None)

    async def close(self) -> None:
        def _close(_: Any) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, _close, None)
        self._pool.shutdown(wait=False)

    # --- revocations ----------------------------------------------------------------

    async def revocation_version(self) -> int:
        return await self.run(
            lambda c: c.execute("SELECT value FROM meta WHERE key='revocation_version'").fetchone()[0]
        )

    async def revocations(self, now: float) -> RevocationSnapshot:
        def q(c: sqlite3.Connection) -> RevocationSnapshot:
            with transaction(c, write=False):  # one snapshot: the version matches what is read
                v = c.execute("SELECT value FROM meta WHERE key='revocation_version'").fetchone()[0]
                epochs = dict(c.execute("SELECT user, epoch FROM epochs").fetchall())
                revoked = dict(c.execute("SELECT ident, until FROM revoked WHERE until > ?", (now,)).fetchall())
            return RevocationSnapshot(v, epochs, revoked)

        return await self.run(q)

    async def set_epoch(self, user: str, epoch: float) -> float:
        def q(c: sqlite3.Connection) -> float:
            c.execute("INSERT INTO epochs (user, epoch) VALUES (?, ?) "
                      "ON CONFLICT(user) DO UPDATE SET epoch = max(epoch, excluded.epoch)", (user, epoch))
            _bump_revocations(c)
            publish(c, user)  # the user's devices may be revoked: their polls look again
            return c.execute("SELECT epoch FROM epochs WHERE user=?", (user,)).fetchone()[0]

        return await self.write(q)

    async def reset_epoch(self, user: str, epoch: float) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO epochs (user, epoch) VALUES (?, ?) "
                      "ON CONFLICT(user) DO UPDATE SET epoch = excluded.epoch", (user, epoch))
            _bump_revocations(c)
            publish(c, user)

        await self.write(q)

    async def revoke(self, ident: str, until: float) -> None:
        def q(c: sqlite3.Connection) -> None:
            # Trim first, only what has expired anyway (an entry is needed until its `until`).
            c.execute("DELETE FROM revoked WHERE until < ?", (time.time(),))
            c.execute("INSERT INTO revoked (ident, until) VALUES (?, ?) "
                      "ON CONFLICT(ident) DO UPDATE SET until = max(until, excluded.until)", (ident, until))
            _bump_revocations(c)

        await self.write(q)

    # --- single-use claims ----------------------------------------------------------

    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            # Expired claims first: a range of the expiry index, so only what goes is read.
            c.execute("DELETE FROM once_claims WHERE expires <= ?", (now,))
            # One statement on the primary key: a new key is inserted; a key still
            # claimed is left alone (rowcount 0); an expired claim the DELETE did
            # not see (a process whose clock is behind) is taken over.
            cur = c.execute("INSERT INTO once_claims (key, expires) VALUES (?, ?) ON CONFLICT(key) "
                            "DO UPDATE SET expires = excluded.expires WHERE once_claims.expires <= ?",
                            (key, now + ttl, now))
            return cur.rowcount == 1

        return await self.write(q)

    # --- accounts -------------------------------------------------------------------

    async def get_account(self, name: str) -> Account | None:
        row = await self.run(
            lambda c: c.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE username=?", (name,)).fetchone()
        )
        return _account(row) if row else None

    async def add_account(self, account: Account) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(f"INSERT OR IGNORE INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            _account_row(account))
            if cur.rowcount == 1:
                _bump_tokens(c)
            return cur.rowcount == 1

        return await self.write(q)

    async def put_account(self, account: Account) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(username) DO UPDATE SET kind=excluded.kind, display_name=excluded.display_name, "
                "email=excluded.email, groups_json=excluded.groups_json, status=excluded.status, "
                "password_hash=excluded.password_hash, "
                "totp_last_step=CASE WHEN totp_secret_enc IS excluded.totp_secret_enc "
                "  THEN max(totp_last_step, excluded.totp_last_step) ELSE excluded.totp_last_step END, "
                "totp_secret_enc=excluded.totp_secret_enc, updated=excluded.updated",
                _account_row(account),
            )
            _bump_tokens(c)

        await self.write(q)

    async def delete_account(self, name: str) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            n = c.execute("DELETE FROM accounts WHERE username=?", (name,)).rowcount
            if n:
                _bump_tokens(c)
            return n == 1

        return await self.write(q)

    async def list_accounts(self) -> list[Account]:
        rows = await self.run(
            lambda c: c.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY username").fetchall())
        return [_account(r) for r in rows]

    async def claim_totp_step(self, name: str, step: int) -> bool:
        return await self.write(lambda c: c.execute(
            "UPDATE accounts SET totp_last_step=? WHERE username=? AND totp_secret_enc IS NOT NULL "
            "AND totp_last_step < ?", (step, name, step)).rowcount == 1)

    # --- failure counters -----------------------------------------------------------

    async def record_failure(self, key: str, now: float, window: float) -> int:
        def q(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM auth_failures WHERE key=? AND at <= ?", (key, now - window))
            # Entries of every key long out of their window (keys that never come back):
            # a range of the `expires` index, so only what goes is read.
            c.execute("DELETE FROM auth_failures WHERE expires <= ?", (now - SWEEP_GRACE,))
            c.execute("INSERT INTO auth_failures (key, at, id, expires) VALUES (?, ?, ?, ?)",
                      (key, now, uuid.uuid4().hex, now + window))
            return c.execute("SELECT count(*) FROM auth_failures WHERE key=? AND at > ? AND at <= ?",
                             (key, now - window, now)).fetchone()[0]

        return await self.write(q)

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]:
        row = await self.run(lambda c: c.execute(
            "SELECT count(*), max(at) FROM auth_failures WHERE key=? AND at > ? AND at <= ?",
            (key, now - window, now)).fetchone())
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    async def clear_failures(self, key: str) -> None:
        await self.write(lambda c: c.execute("DELETE FROM auth_failures WHERE key=?", (key,)))

    # --- tokens and database credentials --------------------------------------------

    async def put_token(self, meta: TokenMeta) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute(f"INSERT INTO api_tokens ({_TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", astuple(meta))
            _bump_tokens(c)

        await self.write(q)

    async def get_token(self, token_id: str) -> TokenMeta | None:
        row = await self.run(lambda c: c.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id=?", (token_id,)).fetchone())
        return TokenMeta(*row) if row else None

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        if account is None:
            rows = await self.run(lambda c: c.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY created, id").fetchall())
        else:
            rows = await self.run(lambda c: c.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE account=? ORDER BY created, id",
                (account,)).fetchall())
        return [TokenMeta(*r) for r in rows]

    async def revoke_token(self, token_id: str, when: float) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            n = c.execute("UPDATE api_tokens SET revoked=? WHERE id=? AND revoked IS NULL", (when, token_id)).rowcount
            if n:
                _bump_tokens(c)
            return n == 1

        return await self.write(q)

    async def touch_tokens(self, used: dict[str, float]) -> None:
        items = [(t, i, t) for i, t in used.items()]
        await self.write(lambda c: c.executemany(
            "UPDATE api_tokens SET last_used=? WHERE id=? AND (last_used IS NULL OR last_used < ?)", items))

    async def tokens_version(self) -> int:
        return await self.run(
            lambda c: c.execute("SELECT value FROM meta WHERE key='tokens_version'").fetchone()[0])

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        await self.write(lambda c: c.execute(
            "INSERT INTO dbcreds (account, sealed, updated, updated_by) VALUES (?,?,?,?) "
            "ON CONFLICT(account) DO UPDATE SET sealed=excluded.sealed, updated=excluded.updated, "
            "updated_by=excluded.updated_by", (account, creds.sealed, creds.updated, creds.updated_by)))

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        row = await self.run(lambda c: c.execute(
            "SELECT sealed, updated, updated_by FROM dbcreds WHERE account=?", (account,)).fetchone())
        return SealedCreds(*row) if row else None

    async def delete_dbcreds(self, account: str) -> bool:
        return await self.write(lambda c: c.execute("DELETE FROM dbcreds WHERE account=?", (account,)).rowcount == 1)
