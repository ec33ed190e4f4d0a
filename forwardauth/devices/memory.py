"""The in-memory DeviceStore, for tests and single-process use.

It offers both change-feed styles (pulled and pushed) so the hub's two
followers can be tested without SQLite or Redis. To move into
forwardauth/state/memory.py as a mixin once the state restructure lands.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from typing import AsyncIterator

from forwardauth.devices.records import ApprovalRequest, Device, Pairing, State
from forwardauth.state.memory import MemoryStore

KEEP_DECIDED = 60.0  # seconds a request is kept after its expiry, for the browser to read the outcome
FEED_LENGTH = 10_000  # changes kept for pulled followers; one further behind looks at everything


class MemoryDevices:
    """The DeviceStore methods over plain dicts. No await between a check
    and its write, so each method is atomic on the event loop."""

    def _devices_init(self) -> None:
        self._devices: dict[str, Device] = {}
        self._pairings: dict[str, Pairing] = {}
        self._requests: dict[str, ApprovalRequest] = {}
        self._feed: deque[tuple[int, str]] = deque(maxlen=FEED_LENGTH)
        self._feed_seq = 0
        self._subscribers: set[asyncio.Queue[str | None]] = set()

    # --- change feed ------------------------------------------------------------
    async def publish_change(self, user: str) -> None:
        self._publish(user)

    def _publish(self, user: str) -> None:
        self._feed_seq += 1
        self._feed.append((self._feed_seq, user))
        for q in self._subscribers:
            q.put_nowait(user)

    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        if cursor is None:
            return self._feed_seq, []
        if self._feed and self._feed[0][0] > cursor + 1:
            return self._feed_seq, None  # fell behind what is kept
        seen: dict[str, None] = {}
        for seq, user in reversed(self._feed):
            if seq <= cursor:
                break
            seen[user] = None
        return self._feed_seq, list(seen)

    async def subscribe_changes(self) -> AsyncIterator[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield None  # "connected": look at everything once
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    # --- devices -----------------------------------------------------------------
    async def add_device(self, device: Device, max_devices: int) -> bool:
        if sum(1 for d in self._devices.values() if d.user == device.user) >= max_devices:
            return False
        self._devices[device.id] = device
        self._publish(device.user)
        return True

    async def device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    async def devices(self, user: str) -> list[Device]:
        return sorted((d for d in self._devices.values() if d.user == user), key=lambda d: (d.created, d.id))

    async def remove_device(self, device_id: str) -> Device | None:
        d = self._devices.pop(device_id, None)
        if d is not None:
            self._publish(d.user)
        return d

    async def remove_devices(self, user: str) -> int:
        gone = [i for i, d in self._devices.items() if d.user == user]
        for i in gone:
            del self._devices[i]
        if gone:
            self._publish(user)
        return len(gone)

    async def touch_device(self, device_id: str, now: float) -> None:
        d = self._devices.get(device_id)
        if d is not None:
            self._devices[device_id] = replace(d, last_seen=now)

    # --- pairing codes -------------------------------------------------------------
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None:
        now = pairing.created
        self._pairings = {k: p for k, p in self._pairings.items() if p.expires > now}
        self._pairings[code_hash] = pairing

    async def pairing(self, code_hash: str, now: float) -> Pairing | None:
        p = self._pairings.get(code_hash)
        return p if p is not None and now < p.expires else None

    async def drop_pairing(self, code_hash: str) -> None:
        self._pairings.pop(code_hash, None)

    # --- approval requests -----------------------------------------------------------
    def _purge_requests(self, now: float) -> None:
        old = [i for i, r in self._requests.items() if r.expires + KEEP_DECIDED < now]
        for i in old:
            del self._requests[i]

    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None:
        self._purge_requests(now)
        if any(r.user == request.user and r.live(now) for r in self._requests.values()):
            return None
        self._requests[request.id] = request
        self._publish(request.user)
        return request

    async def request(self, request_id: str) -> ApprovalRequest | None:
        return self._requests.get(request_id)

    async def pending(self, user: str, now: float) -> list[ApprovalRequest]:
        return [r for r in self._requests.values() if r.user == user and r.state is State.PENDING]

    async def resolve(self, request_id: str, state: State, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None:
        if state not in (State.APPROVED, State.DENIED, State.CANCELLED):
            raise ValueError(f"resolve() to {state.value}")
        r = self._requests.get(request_id)
        if r is None or not r.live(now):
            return None
        r = self._requests[request_id] = replace(r, state=state, reason=reason, decided=now, device_id=device_id)
        self._publish(r.user)
        return r

    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None:
        r = self._requests.get(request_id)
        if r is None or r.state is not State.PENDING or now < r.expires:
            return None
        r = self._requests[request_id] = replace(r, state=State.EXPIRED, decided=now)
        return r


class MemoryDeviceStore(MemoryDevices, MemoryStore):
    """MemoryStore (claim_once, failure counters, revocations) plus devices."""

    def __init__(self) -> None:
        super().__init__()
        self._devices_init()
