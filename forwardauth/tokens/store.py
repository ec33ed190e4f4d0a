"""Token records and service-account database credentials in the state store.

The token itself is never stored (only its id and what it was issued with),
so a copy of the state store cannot be used to authenticate. The SQLite and
memory backends get adapters here; the Redis backend implements the same
`TokenStore` protocol itself. Every write that changes which tokens exist
bumps `tokens_version`, which the in-memory index of each replica polls.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

from forwardauth.state.base import StateStore, StoreUnavailable
from forwardauth.state.sqlite import register_schema

SCHEMA = """
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
INSERT OR IGNORE INTO meta (key, value) VALUES ('tokens_version', 0);
"""
register_schema(SCHEMA)  # at import: before any store of this process opens


@dataclass(frozen=True)
class TokenMeta:
    id: str
    account: str
    name: str
    key_id: str
    level: str
    created: float
    expires: float
    created_by: str
    last_used: float | None = None
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "TokenMeta":
        """Strict: raises ValueError on anything odd."""
        try:
            out = cls(
                id=str(d["id"]), account=str(d["account"]), name=str(d["name"]), key_id=str(d["key_id"]),
                level=str(d["level"]), created=float(d["created"]), expires=float(d["expires"]),
                created_by=str(d["created_by"]),
                last_used=None if d.get("last_used") is None else float(d["last_used"]),
                revoked=None if d.get("revoked") is None else float(d["revoked"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad token record: {exc.__class__.__name__}") from None
        return out


@dataclass(frozen=True)
class SealedCreds:
    sealed: str
    updated: float
    updated_by: str


@runtime_checkable
class TokenStore(Protocol):
    """Token records. Semantics every backend shares:

    - `put_token(meta)`: insert (ids are fresh UUIDs) and bump the version.
    - `get_token(id)`, `list_tokens(account=None)` (ordered by created).
    - `revoke_token(id, when)`: set `revoked` once; True if it was active.
    - `touch_tokens({id: t})`: last_used = max(last_used, t); no version bump
      (last use is for people to read, not for decisions).
    - `tokens_version()`: bumped by put/revoke, and by every account write
      (add/put/delete), so each replica's index learns locks and group changes
      at once (pub/sub with Redis) or within one refresh interval.
    - `put_dbcreds`, `get_dbcreds`: one sealed blob per service account;
      `delete_dbcreds(account)`: True when there was one.
    """

    async def put_token(self, meta: TokenMeta) -> None: ...

    async def get_token(self, token_id: str) -> TokenMeta | None: ...

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]: ...

    async def revoke_token(self, token_id: str, when: float) -> bool: ...

    async def touch_tokens(self, used: dict[str, float]) -> None: ...

    async def tokens_version(self) -> int: ...

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None: ...

    async def get_dbcreds(self, account: str) -> SealedCreds | None: ...

    async def delete_dbcreds(self, account: str) -> bool: ...


_COLS = "id, account, name, key_id, level, created, expires, created_by, last_used, revoked"


def _meta(row: tuple) -> TokenMeta:
    return TokenMeta(*row)


class SQLiteTokens:
    """TokenStore over `SQLiteStore.run` (the store's own thread)."""

    def __init__(self, store: Any):
        self.s = store

    async def _tx(self, fn: Any) -> Any:
        def q(c: sqlite3.Connection) -> Any:
            c.execute("BEGIN IMMEDIATE")
            try:
                out = fn(c)
                c.execute("COMMIT")
                return out
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self.s.run(q)

    @staticmethod
    def _bump(c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = value + 1 WHERE key='tokens_version'")

    async def put_token(self, meta: TokenMeta) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute(f"INSERT INTO api_tokens ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (meta.id, meta.account, meta.name, meta.key_id, meta.level, meta.created, meta.expires,
                       meta.created_by, meta.last_used, meta.revoked))
            self._bump(c)

        await self._tx(q)

    async def get_token(self, token_id: str) -> TokenMeta | None:
        row = await self.s.run(lambda c: c.execute(f"SELECT {_COLS} FROM api_tokens WHERE id=?",
                                                   (token_id,)).fetchone())
        return _meta(row) if row else None

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        if account is None:
            rows = await self.s.run(lambda c: c.execute(
                f"SELECT {_COLS} FROM api_tokens ORDER BY created, id").fetchall())
        else:
            rows = await self.s.run(lambda c: c.execute(
                f"SELECT {_COLS} FROM api_tokens WHERE account=? ORDER BY created, id", (account,)).fetchall())
        return [_meta(r) for r in rows]

    async def revoke_token(self, token_id: str, when: float) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            n = c.execute("UPDATE api_tokens SET revoked=? WHERE id=? AND revoked IS NULL",
                          (when, token_id)).rowcount
            if n:
                self._bump(c)
            return n == 1

        return await self._tx(q)

    async def touch_tokens(self, used: dict[str, float]) -> None:
        items = [(t, i, t) for i, t in used.items()]
        await self._tx(lambda c: c.executemany(
            "UPDATE api_tokens SET last_used=? WHERE id=? AND (last_used IS NULL OR last_used < ?)", items))

    async def tokens_version(self) -> int:
        return await self.s.run(
            lambda c: c.execute("SELECT value FROM meta WHERE key='tokens_version'").fetchone()[0])

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        await self._tx(lambda c: c.execute(
            "INSERT INTO dbcreds (account, sealed, updated, updated_by) VALUES (?,?,?,?) "
            "ON CONFLICT(account) DO UPDATE SET sealed=excluded.sealed, updated=excluded.updated, "
            "updated_by=excluded.updated_by", (account, creds.sealed, creds.updated, creds.updated_by)))

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        row = await self.s.run(lambda c: c.execute(
            "SELECT sealed, updated, updated_by FROM dbcreds WHERE account=?", (account,)).fetchone())
        return SealedCreds(*row) if row else None

    async def delete_dbcreds(self, account: str) -> bool:
        return await self._tx(lambda c: c.execute("DELETE FROM dbcreds WHERE account=?", (account,)).rowcount == 1)


def memory_state(store: Any) -> dict[str, Any]:
    """The token state kept on a MemoryStore object (its accounts bump "version" too)."""
    st = store.__dict__.get("_token_state")
    if st is None:
        st = store.__dict__.setdefault("_token_state", {"lock": threading.Lock(), "tokens": {}, "creds": {},
                                                        "version": 0})
    return st


class MemoryTokens:
    """TokenStore in process memory, kept on the MemoryStore object."""

    def __init__(self, store: Any):
        self.st = memory_state(store)

    async def put_token(self, meta: TokenMeta) -> None:
        with self.st["lock"]:
            self.st["tokens"][meta.id] = meta
            self.st["version"] += 1

    async def get_token(self, token_id: str) -> TokenMeta | None:
        return self.st["tokens"].get(token_id)

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        items = [t for t in self.st["tokens"].values() if account is None or t.account == account]
        return sorted(items, key=lambda t: (t.created, t.id))

    async def revoke_token(self, token_id: str, when: float) -> bool:
        with self.st["lock"]:
            t = self.st["tokens"].get(token_id)
            if t is None or t.revoked is not None:
                return False
            self.st["tokens"][token_id] = replace(t, revoked=when)
            self.st["version"] += 1
            return True

    async def touch_tokens(self, used: dict[str, float]) -> None:
        with self.st["lock"]:
            for i, when in used.items():
                t = self.st["tokens"].get(i)
                if t is not None and (t.last_used is None or t.last_used < when):
                    self.st["tokens"][i] = replace(t, last_used=when)

    async def tokens_version(self) -> int:
        return self.st["version"]

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        self.st["creds"][account] = creds

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        return self.st["creds"].get(account)

    async def delete_dbcreds(self, account: str) -> bool:
        return self.st["creds"].pop(account, None) is not None


def token_store(store: StateStore) -> TokenStore:
    """The TokenStore view of a state backend."""
    if isinstance(store, TokenStore):
        return store
    from forwardauth.state.memory import MemoryStore
    from forwardauth.state.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteTokens(store)
    if isinstance(store, MemoryStore):
        return MemoryTokens(store)
    raise StoreUnavailable(f"the {type(store).__name__} state backend does not hold tokens")
