"""The SQLite store's devices, pairing codes and approval requests (see
`base.DeviceStore`), and its device change feed: a table of (seq, user)
rows written in the same transaction as each change, which one poller per
process reads by `seq` (`changes_since`). Rows older than `FEED_KEEP` go as
new ones come. Mixed into `SQLiteStore`, which creates `SCHEMA` (`TABLES`) when it opens;
writes go through the one transaction helper (`write`), reads to the reader's thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from forwardauth.state.base import KEEP_DECIDED
from forwardauth.state.records import ApprovalRequest, ApprovalState, Device, Pairing

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    secret_hash TEXT NOT NULL,
    last_seen REAL
);
CREATE INDEX IF NOT EXISTS devices_user ON devices (user);
CREATE TABLE IF NOT EXISTS device_pairings (
    code_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    fixed TEXT NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    decided REAL,
    device_id TEXT
);
CREATE INDEX IF NOT EXISTS approval_requests_user_state ON approval_requests (user, state);
CREATE INDEX IF NOT EXISTS approval_requests_expires ON approval_requests (expires);
CREATE TABLE IF NOT EXISTS device_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    at REAL NOT NULL
);
"""

TABLES = frozenset({"devices", "device_pairings", "approval_requests", "device_changes"})

FEED_KEEP = 300.0  # seconds a change row is kept: a follower stuck longer looks at everything

_DEVICE_COLUMNS = "id, user, name, created, secret_hash, last_seen"
_REQUEST_COLUMNS = "fixed, state, reason, decided, device_id"
_RESOLVED = (ApprovalState.APPROVED, ApprovalState.DENIED, ApprovalState.CANCELLED)


def publish(c: sqlite3.Connection, user: str) -> None:
    """One change row, in the caller's transaction; old rows go."""
    now = time.time()
    c.execute("DELETE FROM device_changes WHERE at < ?", (now - FEED_KEEP,))
    c.execute("INSERT INTO device_changes (user, at) VALUES (?, ?)", (user, now))


def _device(row: tuple[Any, ...]) -> Device:
    return Device(row[0], row[1], row[2], float(row[3]), row[4], float(row[5]) if row[5] is not None else None)


def _request(row: tuple[Any, ...]) -> ApprovalRequest:
    return ApprovalRequest.from_parts(row[0], row[1], row[2], row[3], row[4])


class SQLiteDevices:
    # From SQLiteStore (sqlite_file.SQLiteFile): run `fn(connection)` in one write transaction
    # on the writer's thread, or a plain read on the reader's.
    if TYPE_CHECKING:
        async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # --- change feed ------------------------------------------------------------------
    async def publish_change(self, user: str) -> None:
        await self.write(lambda c: publish(c, user))

    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        def q(c: sqlite3.Connection) -> tuple[int, list[str] | None]:
            # No transaction: a change committed between these reads is
            # reported now and again next time (over-reporting is allowed).
            row = c.execute("SELECT seq FROM sqlite_sequence WHERE name='device_changes'").fetchone()
            current = int(row[0]) if row else 0
            if cursor is None or current == cursor:
                return current, []
            first = c.execute("SELECT min(seq) FROM device_changes").fetchone()[0]
            if first is None or first > cursor + 1:
                return current, None  # what came after `cursor` is gone already
            users = [u for (u,) in c.execute("SELECT DISTINCT user FROM device_changes WHERE seq > ?", (cursor,))]
            return current, users

        result: tuple[int, list[str] | None] = await self.read(q)
        return result

    # --- devices ------------------------------------------------------------------------
    async def add_device(self, device: Device, max_devices: int) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            (n,) = c.execute("SELECT count(*) FROM devices WHERE user=?", (device.user,)).fetchone()
            if n >= max_devices:
                return False
            c.execute(f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                      (device.id, device.user, device.name, device.created, device.secret_hash, device.last_seen))
            publish(c, device.user)
            return True

        return bool(await self.write(q))

    async def device(self, device_id: str) -> Device | None:
        row = await self.read(lambda c: c.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id=?",
                                                 (device_id,)).fetchone())
        return _device(row) if row else None

    async def devices(self, user: str) -> list[Device]:
        rows = await self.read(lambda c: c.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user=? "
                                                  f"ORDER BY created, id", (user,)).fetchall())
        return [_device(r) for r in rows]

    async def remove_device(self, device_id: str) -> Device | None:
        def q(c: sqlite3.Connection) -> Device | None:
            row = c.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id=?", (device_id,)).fetchone()
            if row is None:
                return None
            c.execute("DELETE FROM devices WHERE id=?", (device_id,))
            publish(c, row[1])
            return _device(row)

        removed: Device | None = await self.write(q)
        return removed

    async def remove_devices(self, user: str) -> int:
        def q(c: sqlite3.Connection) -> int:
            n = c.execute("DELETE FROM devices WHERE user=?", (user,)).rowcount
            if n:
                publish(c, user)
            return n

        return int(await self.write(q))

    async def touch_device(self, device_id: str, now: float) -> None:
        await self.write(lambda c: c.execute("UPDATE devices SET last_seen=? WHERE id=?", (now, device_id)))

    # --- pairing codes ---------------------------------------------------------------------
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None:
        def q(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM device_pairings WHERE expires <= ?", (pairing.created,))
            c.execute("INSERT OR REPLACE INTO device_pairings (code_hash, user, created, expires) VALUES (?, ?, ?, ?)",
                      (code_hash, pairing.user, pairing.created, pairing.expires))

        await self.write(q)

    async def pairing(self, code_hash: str, now: float) -> Pairing | None:
        row = await self.read(lambda c: c.execute("SELECT user, created, expires FROM device_pairings "
                                                 "WHERE code_hash=? AND expires > ?", (code_hash, now)).fetchone())
        return Pairing(row[0], float(row[1]), float(row[2])) if row else None

    async def drop_pairing(self, code_hash: str) -> None:
        await self.write(lambda c: c.execute("DELETE FROM device_pairings WHERE code_hash=?", (code_hash,)))

    # --- approval requests -------------------------------------------------------------------
    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None:
        def q(c: sqlite3.Connection) -> ApprovalRequest | None:
            c.execute("DELETE FROM approval_requests WHERE expires < ?", (now - KEEP_DECIDED,))
            if c.execute("SELECT 1 FROM approval_requests WHERE user=? AND state='pending' AND expires > ? LIMIT 1",
                         (request.user, now)).fetchone():
                return None
            c.execute("INSERT INTO approval_requests (id, user, fixed, expires, state, reason, decided, device_id) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (request.id, request.user, request.fixed_json(), request.expires, request.state.value,
                       request.reason, request.decided, request.device_id))
            publish(c, request.user)
            return request

        created: ApprovalRequest | None = await self.write(q)
        return created

    async def request(self, request_id: str) -> ApprovalRequest | None:
        row = await self.read(lambda c: c.execute(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE id=?",
                                                 (request_id,)).fetchone())
        return _request(row) if row else None

    async def pending(self, user: str, now: float) -> list[ApprovalRequest]:
        rows = await self.read(lambda c: c.execute(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests "
                                                  f"WHERE user=? AND state='pending'", (user,)).fetchall())
        return sorted((_request(r) for r in rows), key=lambda r: (r.created, r.id))

    async def resolve(self, request_id: str, state: ApprovalState, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None:
        if state not in _RESOLVED:
            raise ValueError(f"resolve() to {state.value}")

        def q(c: sqlite3.Connection) -> ApprovalRequest | None:
            done = c.execute("UPDATE approval_requests SET state=?, reason=?, decided=?, device_id=? "
                             "WHERE id=? AND state='pending' AND expires > ?",
                             (state.value, reason, now, device_id, request_id, now)).rowcount
            if not done:
                return None
            row = c.execute(f"SELECT {_REQUEST_COLUMNS}, user FROM approval_requests WHERE id=?",
                            (request_id,)).fetchone()
            publish(c, row[5])
            return _request(row)

        resolved: ApprovalRequest | None = await self.write(q)
        return resolved

    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None:
        def q(c: sqlite3.Connection) -> ApprovalRequest | None:
            done = c.execute("UPDATE approval_requests SET state='expired', decided=? "
                             "WHERE id=? AND state='pending' AND expires <= ?", (now, request_id, now)).rowcount
            if not done:
                return None
            row = c.execute(f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE id=?", (request_id,)).fetchone()
            return _request(row)

        expired: ApprovalRequest | None = await self.write(q)
        return expired
