"""SQLite state: the embedded default. WAL mode, so several worker processes
and the CLI share one file safely.

All SQL runs on one dedicated thread per store: sqlite3 connections are not
shared across threads, and the event loop never waits on the disk.
Other parts add their tables with `register_schema`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from forwardauth.state.base import RevocationSnapshot, StateStore, StoreUnavailable
from forwardauth.state.local import SCHEMA as LOCAL_SCHEMA
from forwardauth.state.local import SQLiteLocalMixin
from forwardauth.state.local import upgrade as upgrade_local

T = TypeVar("T")

_SCHEMAS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('revocation_version', 0);
    CREATE TABLE IF NOT EXISTS epochs (user TEXT PRIMARY KEY, epoch REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS revoked (ident TEXT PRIMARY KEY, until REAL NOT NULL);
    """
]


def register_schema(sql: str) -> None:
    """Add idempotent DDL (CREATE ... IF NOT EXISTS) run when a store opens."""
    if sql not in _SCHEMAS:
        _SCHEMAS.append(sql)


register_schema(LOCAL_SCHEMA)  # local accounts and failure counters (forwardauth.state.local)


class SQLiteStore(SQLiteLocalMixin, StateStore):
    def __init__(self, path: str):
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

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
                for sql in _SCHEMAS:
                    conn.executescript(sql)
                upgrade_local(conn)
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
            raise StoreUnavailable(f"sqlite state {self.path}: {exc.__class__.__name__}: {exc}") from None
        except OSError as exc:  # the file or its directory (sqlite3 reports most as sqlite3.Error)
            raise StoreUnavailable(f"sqlite state {self.path}: {exc.strerror or exc.__class__.__name__}") from None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

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

    async def revocation_version(self) -> int:
        return await self.run(
            lambda c: c.execute("SELECT value FROM meta WHERE key='revocation_version'").fetchone()[0]
        )

    async def revocations(self, now: float) -> RevocationSnapshot:
        def q(c: sqlite3.Connection) -> RevocationSnapshot:
            c.execute("BEGIN")
            try:
                v = c.execute("SELECT value FROM meta WHERE key='revocation_version'").fetchone()[0]
                epochs = dict(c.execute("SELECT user, epoch FROM epochs").fetchall())
                revoked = dict(c.execute("SELECT ident, until FROM revoked WHERE until > ?", (now,)).fetchall())
            finally:
                c.execute("COMMIT")
            return RevocationSnapshot(v, epochs, revoked)

        return await self.run(q)

    @staticmethod
    def _bump(c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = value + 1 WHERE key='revocation_version'")

    async def set_epoch(self, user: str, epoch: float) -> float:
        def q(c: sqlite3.Connection) -> float:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "INSERT INTO epochs (user, epoch) VALUES (?, ?) "
                    "ON CONFLICT(user) DO UPDATE SET epoch = max(epoch, excluded.epoch)",
                    (user, epoch),
                )
                self._bump(c)
                out = c.execute("SELECT epoch FROM epochs WHERE user=?", (user,)).fetchone()[0]
                c.execute("COMMIT")
                return out
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self.run(q)

    async def reset_epoch(self, user: str, epoch: float) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("INSERT INTO epochs (user, epoch) VALUES (?, ?) "
                          "ON CONFLICT(user) DO UPDATE SET epoch = excluded.epoch", (user, epoch))
                self._bump(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self.run(q)

    async def revoke(self, ident: str, until: float) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                # Trim first, only what has expired anyway (an entry is needed until its `until`).
                c.execute("DELETE FROM revoked WHERE until < ?", (time.time(),))
                c.execute(
                    "INSERT INTO revoked (ident, until) VALUES (?, ?) "
                    "ON CONFLICT(ident) DO UPDATE SET until = max(until, excluded.until)",
                    (ident, until),
                )
                self._bump(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self.run(q)

    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                # Expired claims first: a range of the expiry index, so only what goes is read.
                c.execute("DELETE FROM once_claims WHERE expires <= ?", (now,))
                # One statement on the primary key: a new key is inserted; a key still
                # claimed is left alone (rowcount 0); an expired claim the DELETE did
                # not see (a process whose clock is behind) is taken over.
                cur = c.execute("INSERT INTO once_claims (key, expires) VALUES (?, ?) ON CONFLICT(key) "
                                "DO UPDATE SET expires = excluded.expires WHERE once_claims.expires <= ?",
                                (key, now + ttl, now))
                c.execute("COMMIT")
                return cur.rowcount == 1
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self.run(q)
