"""The memory store's devices, pairing codes and approval requests (see
`base.DeviceStore`), and both styles of change feed, so that the code
following either can be tested without SQLite or Redis. Mixed into
`MemoryStore`; no await between a check and its write, so each method is
atomic on the event loop (the lock is for other threads, as in the store).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace

from forwardauth.state.base import KEEP_DECIDED
from forwardauth.state.records import ApprovalRequest, ApprovalState, Device, Pairing

FEED_LENGTH = 10_000  # changes kept for pulled followers; one further behind looks at everything
RESOLVED = (ApprovalState.APPROVED, ApprovalState.DENIED, ApprovalState.CANCELLED)


class MemoryDevices:
    lock: threading.Lock

    def _devices_init(self) -> None:
        self.devices_by_id: dict[str, Device] = {}
        self.pairings: dict[str, Pairing] = {}
        self.requests: dict[str, ApprovalRequest] = {}
        self.feed: deque[tuple[int, str]] = deque(maxlen=FEED_LENGTH)
        self.feed_seq = 0
        self.feed_queues: set[asyncio.Queue[str | None]] = set()

    # --- change feed --------------------------------------------------------------
    def _publish(self, user: str) -> None:
        self.feed_seq += 1
        self.feed.append((self.feed_seq, user))
        for q in self.feed_queues:
            q.put_nowait(user)

    async def publish_change(self, user: str) -> None:
        with self.lock:
            self._publish(user)

    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        with self.lock:
            if cursor is None:
                return self.feed_seq, []
            if self.feed and self.feed[0][0] > cursor + 1:
                return self.feed_seq, None  # fell behind what is kept
            seen: dict[str, None] = {}
            for seq, user in reversed(self.feed):
                if seq <= cursor:
                    break
                seen[user] = None
            return self.feed_seq, list(seen)

    async def subscribe_changes(self) -> AsyncIterator[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue()
        self.feed_queues.add(q)
        try:
            yield None  # "connected": look at everything once
            while True:
                yield await q.get()
        finally:
            self.feed_queues.discard(q)

    # --- devices --------------------------------------------------------------------
    async def add_device(self, device: Device, max_devices: int) -> bool:
        with self.lock:
            if sum(1 for d in self.devices_by_id.values() if d.user == device.user) >= max_devices:
                return False
            self.devices_by_id[device.id] = device
            self._publish(device.user)
            return True

    async def device(self, device_id: str) -> Device | None:
        return self.devices_by_id.get(device_id)

    async def devices(self, user: str) -> list[Device]:
        with self.lock:
            return sorted((d for d in self.devices_by_id.values() if d.user == user), key=lambda d: (d.created, d.id))

    async def remove_device(self, device_id: str) -> Device | None:
        with self.lock:
            d = self.devices_by_id.pop(device_id, None)
            if d is not None:
                self._publish(d.user)
            return d

    async def remove_devices(self, user: str) -> int:
        with self.lock:
            gone = [i for i, d in self.devices_by_id.items() if d.user == user]
            for i in gone:
                del self.devices_by_id[i]
            if gone:
                self._publish(user)
            return len(gone)

    async def touch_device(self, device_id: str, now: float) -> None:
        with self.lock:
            d = self.devices_by_id.get(device_id)
            if d is not None:
                self.devices_by_id[device_id] = replace(d, last_seen=now)

    # --- pairing codes ----------------------------------------------------------------
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None:
        with self.lock:
            now = pairing.created
            self.pairings = {k: p for k, p in self.pairings.items() if p.expires > now}
            self.pairings[code_hash] = pairing

    async def pairing(self, code_hash: str, now: float) -> Pairing | None:
        p = self.pairings.get(code_hash)
        return p if p is not None and now < p.expires else None

    async def drop_pairing(self, code_hash: str) -> None:
        with self.lock:
            self.pairings.pop(code_hash, None)

    # --- approval requests ----------------------------------------------------------------
    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None:
        with self.lock:
            old = [i for i, r in self.requests.items() if r.expires + KEEP_DECIDED < now]
            for i in old:
                del self.requests[i]
            if any(r.user == request.user and r.live(now) for r in self.requests.values()):
                return None
            self.requests[request.id] = request
            self._publish(request.user)
            return request

    async def request(self, request_id: str) -> ApprovalRequest | None:
        return self.requests.get(request_id)

    async def pending(self, user: str, now: float) -> list[ApprovalRequest]:
        with self.lock:
            return sorted((r for r in self.requests.values() if r.user == user and r.state is ApprovalState.PENDING),
                          key=lambda r: (r.created, r.id))

    async def resolve(self, request_id: str, state: ApprovalState, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None:
        if state not in RESOLVED:
            raise ValueError(f"resolve() to {state.value}")
        with self.lock:
            r = self.requests.get(request_id)
            if r is None or not r.live(now):
                return None
            r = self.requests[request_id] = replace(r, state=state, reason=reason, decided=now,
                                                    device_id=device_id)
            self._publish(r.user)
            return r

    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None:
        with self.lock:
            r = self.requests.get(request_id)
            if r is None or r.state is not ApprovalState.PENDING or now < r.expires:
                return None
            r = self.requests[request_id] = replace(r, state=ApprovalState.EXPIRED, decided=now)
            return r
