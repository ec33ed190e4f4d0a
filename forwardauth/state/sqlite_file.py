"""The SQLite file under the store (forwardauth.state.sqlite): its schema, its
transactions, the two threads that use it, and the watch on its identity.

sqlite3 connections are not shared across threads, and the event loop never
waits on the disk, so SQL runs on the store's own threads, each with its own
connection: the writer runs every write transaction (`write`; `run` for
anything), the reader every plain read (`read`). In WAL mode a reader never
waits for a writer, so a write stuck behind another process's lock (up to
the 5 s busy timeout) or failing on a full disk never holds up the reads that
keep the decisions' snapshots fresh.

The file is watched: each call first checks that the path still names the
file this process opened (device and inode). Deleted: every call fails
(StoreUnavailable, and `_problem` for /readyz) until it is back; writing to
a deleted file would be a split brain with a command, which would make a new
one. Replaced (a new file at the path: made by a command while the old one
was gone, or a backup put back): both threads open the new file, and
`losses` tells the snapshots to write back what they remember into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from forwardauth.state.base import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger("forwardauth.state.sqlite")

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


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


TABLES = frozenset({"meta", "epochs", "revoked", "accounts", "auth_failures", "once_claims", "api_tokens",
                    "dbcreds"})


def _has_schema(c: sqlite3.Connection, tables: frozenset[str]) -> bool:
    """The file already holds every table (so a read-only file can still be read)."""
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return tables <= names


def _needs_upgrade(c: sqlite3.Connection) -> bool:
    """A file made by an older version: auth_failures without `expires` (missing
    tables are `_has_schema`'s)."""
    cols = {row[1] for row in c.execute("PRAGMA table_info(auth_failures)")}
    index = c.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='auth_failures_expires'").fetchone()
    return "expires" not in cols or index is None


class SQLiteFile:
    """The plumbing of SQLiteStore (see the module)."""

    # What the file must hold, made when it opens: the store adds its other tables' (devices, ...).
    schema: str = SCHEMA
    tables: frozenset[str] = TABLES

    def __init__(self, path: str):
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-w")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-r")
        self._local = threading.local()  # each thread's connection, and the file generation it opened
        self._lock = threading.Lock()  # the identity and the generation, shared by the two threads
        self._generation = 0  # bumped when the file is replaced: each thread opens it anew
        self._identity: tuple[int, int] | None = None
        self._problem: str | None = None  # the file is gone
        self.losses = 0

    def _connect(self) -> sqlite3.Connection:
        loc = self._local
        conn: sqlite3.Connection | None = getattr(loc, "conn", None)
        if conn is not None and loc.generation == self._generation:
            return conn
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            loc.conn = None
        generation = self._generation
        if self.path != ":memory:":
            parent = Path(self.path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"sqlite state {self.path}: cannot create its directory {parent}: "
                                       f"{exc.strerror or exc.__class__.__name__}") from None
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if not _has_schema(conn, self.tables) or _needs_upgrade(conn):  # (the write lock only when needed)
                    conn.executescript(self.schema)
                    _upgrade(conn)
            except sqlite3.OperationalError:
                # A read-only (or full, or locked) file that already holds everything is
                # still read: decisions keep their snapshots fresh, writes fail one by one.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not _has_schema(conn, self.tables):
                    raise
        except BaseException:
            conn.close()
            raise
        if self.path != ":memory:":
            with self._lock:
                if self._identity is None:
                    self._identity = _identity(os.stat(self.path))
        loc.conn, loc.generation = conn, generation
        return conn

    def _watch(self) -> None:
        """Is the path still the file this process opened? See the module."""
        if self._identity is None:
            return
        try:
            now = _identity(os.stat(self.path))
        except FileNotFoundError:
            with self._lock:
                if self._problem is None:
                    self._problem = (f"sqlite state {self.path}: the file was deleted while forwardauth ran; "
                                     "nothing is read or written until it is back (or a new one is made there)")
                    log.error(self._problem)
            raise StoreUnavailable(self._problem) from None
        with self._lock:
            if self._problem is not None:
                log.warning("sqlite state %s: the file is back", self.path)
                self._problem = None
            if now != self._identity:
                log.error("sqlite state %s: the file was replaced while forwardauth ran; opening the new one "
                          "(what this process remembers is written back into it)", self.path)
                self._identity = now
                self._generation += 1
                self.losses += 1

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """On one of the store's threads: every failure of the file is StoreUnavailable, naming the path."""
        try:
            self._watch()
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
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._local.conn = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the writer's thread (anything: reads, writes, pragmas)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._call, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)`, which only reads, on the reader's thread (":memory:" has one connection)."""
        pool = self._writer if self.path == ":memory:" else self._reader
        return await asyncio.get_running_loop().run_in_executor(pool, self._call, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one write transaction on the writer's thread."""

        def tx(c: sqlite3.Connection) -> T:
            with transaction(c):
                return fn(c)

        return await self.run(tx)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For the CLI: same as run, without an event loop."""
        return self._writer.submit(self._call, fn).result()

    async def open(self) -> None:
        await self.run(lambda c: None)

    async def close(self) -> None:
        def _close(_: Any) -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        loop = asyncio.get_running_loop()
        for pool in (self._writer, self._reader):
            await loop.run_in_executor(pool, _close, None)
            pool.shutdown(wait=False)
