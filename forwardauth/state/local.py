"""Local accounts and failure counters for the SQLite and memory backends.

Mixed into `SQLiteStore` and `MemoryStore`; the semantics are written once,
in `forwardauth.accounts.AccountStore` and `forwardauth.regulation.FailureStore`,
and the Redis backend implements the same methods.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
import uuid
from typing import Any, Callable, TypeVar

from forwardauth.accounts import Account

T = TypeVar("T")

SCHEMA = """
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
"""

# A failure entry is swept (whatever its key) this long after it left the
# window it was recorded with: every process stamps `now` from its own clock,
# and a request whose `now` is a little behind must still see what it counts.
# (Redis keys get the same margin: EXPIRE window + 60.)
SWEEP_GRACE = 60.0


def upgrade(c: sqlite3.Connection) -> None:
    """Bring a state file made by an older version up to SCHEMA: auth_failures
    gained `expires` (recorded at + window, so entries of keys that never come
    back can be swept) and its index. Rows from before have no `expires`:
    they go when their key records again (the per-key trim), never by the sweep,
    whose window they do not carry."""
    c.execute("BEGIN IMMEDIATE")  # two processes opening an old file: one adds the column
    try:
        cols = {row[1] for row in c.execute("PRAGMA table_info(auth_failures)")}
        if "expires" not in cols:
            c.execute("ALTER TABLE auth_failures ADD COLUMN expires REAL")
        c.execute("CREATE INDEX IF NOT EXISTS auth_failures_expires ON auth_failures (expires)")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise

_COLUMNS = ("username, kind, display_name, email, groups_json, status, password_hash, totp_secret_enc, "
            "totp_last_step, created, updated")


def _row(a: Account) -> tuple[Any, ...]:
    return (a.username, a.kind, a.display_name, a.email, json.dumps(list(a.groups)), a.status, a.password_hash,
            a.totp_secret_enc, a.totp_last_step, a.created, a.updated)


def _account(row: tuple[Any, ...]) -> Account:
    return Account(username=row[0], kind=row[1], display_name=row[2], email=row[3], groups=tuple(json.loads(row[4])),
                   status=row[5], password_hash=row[6], totp_secret_enc=row[7], totp_last_step=int(row[8]),
                   created=float(row[9]), updated=float(row[10]))


def _bump_accounts(c: sqlite3.Connection) -> None:
    """Account writes bump the token index's version (see tokens.store.TokenStore):
    each process's index then learns locks and group changes at its next tick."""
    c.execute("UPDATE meta SET value = value + 1 WHERE key='tokens_version'")


def _tx(c: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """One write transaction (BEGIN IMMEDIATE: takes the write lock up front)."""
    c.execute("BEGIN IMMEDIATE")
    try:
        out = fn(c)
        c.execute("COMMIT")
        return out
    except BaseException:
        c.execute("ROLLBACK")
        raise


class SQLiteLocalMixin:
    """Accounts and failure counters in the SQLite state file (needs `self.run`)."""

    run: Callable[..., Any]

    async def get_account(self, name: str) -> Account | None:
        row = await self.run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM accounts WHERE username=?", (name,)).fetchone()
        )
        return _account(row) if row else None

    async def add_account(self, account: Account) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                f"INSERT OR IGNORE INTO accounts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", _row(account)
            )
            if cur.rowcount == 1:
                _bump_accounts(c)
            return cur.rowcount == 1

        return await self.run(lambda c: _tx(c, q))

    async def put_account(self, account: Account) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO accounts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(username) DO UPDATE SET kind=excluded.kind, display_name=excluded.display_name, "
                "email=excluded.email, groups_json=excluded.groups_json, status=excluded.status, "
                "password_hash=excluded.password_hash, "
                "totp_last_step=CASE WHEN totp_secret_enc IS excluded.totp_secret_enc "
                "  THEN max(totp_last_step, excluded.totp_last_step) ELSE excluded.totp_last_step END, "
                "totp_secret_enc=excluded.totp_secret_enc, updated=excluded.updated",
                _row(account),
            )
            _bump_accounts(c)

        await self.run(lambda c: _tx(c, q))

    async def delete_account(self, name: str) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            n = c.execute("DELETE FROM accounts WHERE username=?", (name,)).rowcount
            if n:
                _bump_accounts(c)
            return n == 1

        return await self.run(lambda c: _tx(c, q))

    async def list_accounts(self) -> list[Account]:
        rows = await self.run(lambda c: c.execute(f"SELECT {_COLUMNS} FROM accounts ORDER BY username").fetchall())
        return [_account(r) for r in rows]

    async def claim_totp_step(self, name: str, step: int) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE accounts SET totp_last_step=? WHERE username=? AND totp_secret_enc IS NOT NULL "
                "AND totp_last_step < ?",
                (step, name, step),
            )
            return cur.rowcount == 1

        return await self.run(lambda c: _tx(c, q))

    async def record_failure(self, key: str, now: float, window: float) -> int:
        def q(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM auth_failures WHERE key=? AND at <= ?", (key, now - window))
            # Entries of every key long out of their window (keys that never come back):
            # a range of the `expires` index, so only what goes is read.
            c.execute("DELETE FROM auth_failures WHERE expires <= ?", (now - SWEEP_GRACE,))
            c.execute("INSERT INTO auth_failures (key, at, id, expires) VALUES (?, ?, ?, ?)",
                      (key, now, uuid.uuid4().hex, now + window))
            return c.execute(
                "SELECT count(*) FROM auth_failures WHERE key=? AND at > ? AND at <= ?", (key, now - window, now)
            ).fetchone()[0]

        return await self.run(lambda c: _tx(c, q))

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]:
        row = await self.run(
            lambda c: c.execute(
                "SELECT count(*), max(at) FROM auth_failures WHERE key=? AND at > ? AND at <= ?",
                (key, now - window, now),
            ).fetchone()
        )
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    async def clear_failures(self, key: str) -> None:
        await self.run(lambda c: _tx(c, lambda c: c.execute("DELETE FROM auth_failures WHERE key=?", (key,))))


class Expiries:
    """When each key of a dict may go, and which have gone: a heap of
    (expires, key), so a sweep reads only what it removes. Not thread-safe
    (callers hold their lock)."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, key: str, expires: float) -> None:
        self.until[key] = expires
        heapq.heappush(self._heap, (expires, key))

    def forget(self, key: str) -> None:
        self.until.pop(key, None)  # its heap entries are skipped when they come up

    def pop_expired(self, upto: float) -> list[str]:
        """Remove and return the keys whose latest expiry is at or before `upto`."""
        out = []
        while self._heap and self._heap[0][0] <= upto:
            expires, key = heapq.heappop(self._heap)
            if self.until.get(key) == expires:  # else a later set() (or forget()) superseded it
                del self.until[key]
                out.append(key)
        return out


class MemoryLocalMixin:
    """The same, in process memory (tests, single-process experiments)."""

    def _bump_accounts(self) -> None:
        from forwardauth.tokens.store import memory_state

        st = memory_state(self)
        with st["lock"]:
            st["version"] += 1

    def _local(self) -> tuple[threading.Lock, dict[str, Account], dict[str, list[float]], Expiries]:
        st = self.__dict__.get("_local_state")
        if st is None:
            st = self.__dict__.setdefault("_local_state", (threading.Lock(), {}, {}, Expiries()))
        return st

    async def get_account(self, name: str) -> Account | None:
        return self._local()[1].get(name)

    async def add_account(self, account: Account) -> bool:
        lock, accounts, _, _ = self._local()
        with lock:
            if account.username in accounts:
                return False
            accounts[account.username] = account
        self._bump_accounts()
        return True

    async def put_account(self, account: Account) -> None:
        from dataclasses import replace

        lock, accounts, _, _ = self._local()
        with lock:
            old = accounts.get(account.username)
            if old is not None:
                step = account.totp_last_step
                if old.totp_secret_enc == account.totp_secret_enc:
                    step = max(step, old.totp_last_step)
                account = replace(account, totp_last_step=step, created=old.created)
            accounts[account.username] = account
        self._bump_accounts()

    async def delete_account(self, name: str) -> bool:
        lock, accounts, _, _ = self._local()
        with lock:
            found = accounts.pop(name, None) is not None
        if found:
            self._bump_accounts()
        return found

    async def list_accounts(self) -> list[Account]:
        return [a for _, a in sorted(self._local()[1].items())]

    async def claim_totp_step(self, name: str, step: int) -> bool:
        from dataclasses import replace

        lock, accounts, _, _ = self._local()
        with lock:
            a = accounts.get(name)
            if a is None or a.totp_secret_enc is None or a.totp_last_step >= step:
                return False
            accounts[name] = replace(a, totp_last_step=step)
            return True

    async def record_failure(self, key: str, now: float, window: float) -> int:
        lock, _, fails, expiries = self._local()
        with lock:
            # Keys whose every entry left its window (keys that never come back), as in SQLite.
            for gone in expiries.pop_expired(now - SWEEP_GRACE):
                fails.pop(gone, None)
            kept = [t for t in fails.get(key, []) if t > now - window]
            kept.append(now)
            fails[key] = kept
            expiries.set(key, max(expiries.until.get(key, now + window), now + window))
            return sum(1 for t in kept if t <= now)

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]:
        lock, _, fails, _ = self._local()
        with lock:
            inside = [t for t in fails.get(key, []) if now - window < t <= now]
        return len(inside), (max(inside) if inside else None)

    async def clear_failures(self, key: str) -> None:
        lock, _, fails, expiries = self._local()
        with lock:
            fails.pop(key, None)
            expiries.forget(key)
