"""SQLite: the WebAuthn credentials table and the `WebAuthnStore` methods.

A mixin of `SQLiteStore` (kept apart so sqlite.py stays readable); its
schema is created by the file's plumbing (sqlite_file.py) when it opens,
with every other table. Reads run on the store's reader thread; writes in
one `BEGIN IMMEDIATE` transaction (sqlite_file.transaction) on its writer, so the duplicate and limit
checks of an insert and the counter rule of a use are atomic across the
processes sharing the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from forwardauth.core import jsonstrict
from forwardauth.state.records import (
    DUPLICATE_MESSAGE,
    Advance,
    DuplicateCredential,
    TooManyCredentials,
    WebAuthnCredential,
    check_credential_name,
    counter_advances,
    too_many_message,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webauthn_credentials (
    id BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    user_handle BLOB NOT NULL,
    public_key BLOB NOT NULL,
    sign_count INTEGER NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    transports TEXT NOT NULL,
    aaguid TEXT NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backed_up INTEGER NOT NULL,
    user_verifying INTEGER NOT NULL,
    discoverable INTEGER,
    last_used REAL,
    locked TEXT
);
CREATE INDEX IF NOT EXISTS webauthn_credentials_user ON webauthn_credentials (user, created);
"""

_COLUMNS = ("id, user, user_handle, public_key, sign_count, name, created, transports, aaguid, backup_eligible, "
            "backed_up, user_verifying, discoverable, last_used, locked")


def _row(c: WebAuthnCredential) -> tuple[Any, ...]:
    return (c.id, c.user, c.user_handle, c.public_key, c.sign_count, c.name, c.created, json.dumps(c.transports),
            c.aaguid, int(c.backup_eligible), int(c.backed_up), int(c.user_verifying),
            None if c.discoverable is None else int(c.discoverable), c.last_used, c.locked)


def _credential(r: tuple[Any, ...]) -> WebAuthnCredential:
    return WebAuthnCredential(
        id=bytes(r[0]), user=r[1], user_handle=bytes(r[2]), public_key=bytes(r[3]), sign_count=int(r[4]), name=r[5],
        created=float(r[6]), transports=tuple(jsonstrict.loads(r[7], max_depth=1)), aaguid=r[8],
        backup_eligible=bool(r[9]),
        backed_up=bool(r[10]), user_verifying=bool(r[11]), discoverable=None if r[12] is None else bool(r[12]),
        last_used=r[13], locked=r[14])


def _one(c: sqlite3.Connection, credential_id: bytes) -> WebAuthnCredential | None:
    r = c.execute(f"SELECT {_COLUMNS} FROM webauthn_credentials WHERE id=?", (credential_id,)).fetchone()
    return _credential(r) if r else None


class SQLiteWebAuthn:
    if TYPE_CHECKING:  # provided by SQLiteFile (reads on the reader's thread, writes in one transaction)
        async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def webauthn_credentials(self, user: str) -> list[WebAuthnCredential]:
        rows = await self.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM webauthn_credentials WHERE user=? ORDER BY created, id", (user,)).fetchall())
        return [_credential(r) for r in rows]

    async def webauthn_credential(self, credential_id: bytes) -> WebAuthnCredential | None:
        return await self.read(lambda c: _one(c, credential_id))

    async def add_webauthn_credential(self, credential: WebAuthnCredential, max_per_user: int) -> None:
        def q(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM webauthn_credentials WHERE id=?", (credential.id,)).fetchone():
                raise DuplicateCredential(DUPLICATE_MESSAGE)
            n = c.execute("SELECT count(*) FROM webauthn_credentials WHERE user=?", (credential.user,)).fetchone()[0]
            if n >= max_per_user:
                raise TooManyCredentials(too_many_message(max_per_user))
            c.execute(f"INSERT INTO webauthn_credentials ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                      _row(credential))

        await self.write(q)

    async def rename_webauthn_credential(self, user: str, credential_id: bytes, name: str) -> bool:
        name = check_credential_name(name)
        return await self.write(lambda c: c.execute(
            "UPDATE webauthn_credentials SET name=? WHERE id=? AND user=?", (name, credential_id, user)).rowcount > 0)

    async def remove_webauthn_credential(self, user: str, credential_id: bytes) -> bool:
        return await self.write(lambda c: c.execute(
            "DELETE FROM webauthn_credentials WHERE id=? AND user=?", (credential_id, user)).rowcount > 0)

    async def remove_webauthn_credentials(self, user: str) -> int:
        return await self.write(lambda c: c.execute("DELETE FROM webauthn_credentials WHERE user=?",
                                                    (user,)).rowcount)

    async def advance_webauthn_credential(self, credential_id: bytes, sign_count: int, backed_up: bool,
                                          user_verified: bool, now: float, lock_reason: str) -> Advance:
        def q(c: sqlite3.Connection) -> Advance:
            cred = _one(c, credential_id)
            if cred is None:
                return Advance.GONE
            if cred.locked is not None:
                return Advance.LOCKED
            if not counter_advances(cred.sign_count, sign_count):
                c.execute("UPDATE webauthn_credentials SET locked=? WHERE id=?", (lock_reason, credential_id))
                return Advance.REGRESSED
            new = cred.used(sign_count, backed_up, user_verified, now)
            c.execute("UPDATE webauthn_credentials SET sign_count=?, backed_up=?, last_used=?, user_verifying=? "
                      "WHERE id=?", (new.sign_count, int(new.backed_up), new.last_used, int(new.user_verifying),
                                     credential_id))
            return Advance.ADVANCED

        return await self.write(q)
