"""SQLite state: the embedded default. WAL mode, so several worker processes
and the CLI share one file safely.

The file, its schema, its threads and the watch on its identity are in
`forwardauth.state.sqlite_file`. The store creates every table it holds
when it opens (`SCHEMA`, the WebAuthn credentials' table from
`sqlite_webauthn`, the devices' tables from `sqlite_devices`, then
`_upgrade` for files made by older versions); nothing else adds to it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import astuple
from typing import Any

from forwardauth.state.base import SWEEP_GRACE, StateStore, lost_message
from forwardauth.state.records import Account, RevocationSnapshot, SealedCreds, TokenMeta
from forwardauth.state.sqlite_devices import SCHEMA as DEVICES_SCHEMA
from forwardauth.state.sqlite_devices import TABLES as DEVICES_TABLES
from forwardauth.state.sqlite_devices import SQLiteDevices, publish
from forwardauth.state.sqlite_file import SCHEMA, TABLES, SQLiteFile, transaction
from forwardauth.state.sqlite_webauthn import SCHEMA as WEBAUTHN_SCHEMA
from forwardauth.state.sqlite_webauthn import SQLiteWebAuthn

__all__ = ["SCHEMA", "SQLiteStore", "transaction"]


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


class SQLiteStore(SQLiteWebAuthn, SQLiteDevices, SQLiteFile, StateStore):
    """The records, on the file (its threads, its watch: forwardauth.state.sqlite_file)."""

    schema = SCHEMA + WEBAUTHN_SCHEMA + DEVICES_SCHEMA
    tables = TABLES | {"webauthn_credentials"} | DEVICES_TABLES

    def __init__(self, path: str):
        super().__init__(path)
        self._lost_at: float | None = None  # the loss recorded in the file (meta 'lost_at'), as last read

    # --- revocations ----------------------------------------------------------------

    async def revocation_version(self) -> int:
        rows = dict(await self.read(lambda c: c.execute(
            "SELECT key, value FROM meta WHERE key IN ('revocation_version', 'lost_at')").fetchall()))
        self._lost_at = rows.get("lost_at")
        return int(rows["revocation_version"])

    # --- continuity (see StateStore and the class) -------------------------------------

    def problem(self) -> str | None:
        if self._problem is not None:
            return self._problem
        if self._lost_at is not None:
            return lost_message(f"sqlite state {self.path}", float(self._lost_at))
        return None

    async def restored(self) -> None:
        at = time.time()
        await self.write(lambda c: c.execute(
            "INSERT INTO meta (key, value) VALUES ('lost_at', ?) ON CONFLICT(key) DO NOTHING", (at,)))
        self._lost_at = self._lost_at or at

    async def acknowledge(self) -> str:
        """`forwardauth state ack`: the file as it is now is the truth."""
        n = await self.write(lambda c: c.execute("DELETE FROM meta WHERE key='lost_at'").rowcount)
        self._lost_at = None
        return "the recorded loss is acknowledged" if n else "nothing to acknowledge"

    async def revocations(self, now: float) -> RevocationSnapshot:
        def q(c: sqlite3.Connection) -> RevocationSnapshot:
            with transaction(c, write=False):  # one snapshot: the version matches what is read
                v = c.execute("SELECT value FROM meta WHERE key='revocation_version'").fetchone()[0]
                epochs = dict(c.execute("SELECT user, epoch FROM epochs").fetchall())
                revoked = dict(c.execute("SELECT ident, until FROM revoked WHERE until > ?", (now,)).fetchall())
            return RevocationSnapshot(v, epochs, revoked)

        return await self.read(q)

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
        row = await self.read(
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
        rows = await self.read(
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
        row = await self.read(lambda c: c.execute(
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
        row = await self.read(lambda c: c.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id=?", (token_id,)).fetchone())
        return TokenMeta(*row) if row else None

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        if account is None:
            rows = await self.read(lambda c: c.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY created, id").fetchall())
        else:
            rows = await self.read(lambda c: c.execute(
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
        return await self.read(
            lambda c: c.execute("SELECT value FROM meta WHERE key='tokens_version'").fetchone()[0])

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        await self.write(lambda c: c.execute(
            "INSERT INTO dbcreds (account, sealed, updated, updated_by) VALUES (?,?,?,?) "
            "ON CONFLICT(account) DO UPDATE SET sealed=excluded.sealed, updated=excluded.updated, "
            "updated_by=excluded.updated_by", (account, creds.sealed, creds.updated, creds.updated_by)))

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        row = await self.read(lambda c: c.execute(
            "SELECT sealed, updated, updated_by FROM dbcreds WHERE account=?", (account,)).fetchone())
        return SealedCreds(*row) if row else None

    async def delete_dbcreds(self, account: str) -> bool:
        return await self.write(lambda c: c.execute("DELETE FROM dbcreds WHERE account=?", (account,)).rowcount == 1)
