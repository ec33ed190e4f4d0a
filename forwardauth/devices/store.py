"""The state this part needs from a store, as protocols. Every backend
(memory, SQLite, Redis) implements them with the same semantics, written
here once.

Besides these, the part uses what every store already has: `claim_once`
(pairing codes are single use) and the failure counters of
`regulation.FailureStore` (request rate limits, and regulation of wrong
phrases).

Change feed. A poll waits on its own process; what wakes it is a *change*
of a user's devices or requests, which may happen on another worker or
replica. Every write below that changes what a device of `user` would see
(or whether the device is still valid) publishes `user` on the feed, in the
store, after the write is visible. Two styles, one per backend:

  - pulled (SQLite, shared by the worker processes of one host): a change
    counter. `changes_since(cursor)` returns the users changed after
    `cursor` and the new cursor; one poller per *process* asks a few times a
    second (not one per waiting device), and wakes only those users' polls.
  - pushed (Redis, across replicas): pub/sub. `subscribe_changes()` yields
    users as they are published, and None whenever it (re)connects, since
    messages may have been missed meanwhile: then every poll looks again.

A woken poll reads its snapshot again and answers only if its ETag changed,
so a spurious wake costs a read, never a wrong answer: a feed may always
over-report, never under-report.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

from forwardauth.devices.records import ApprovalRequest, Device, Pairing, State


@runtime_checkable
class DeviceStore(Protocol):
    # --- devices --------------------------------------------------------------
    async def add_device(self, device: Device, max_devices: int) -> bool:
        """Add `device` unless its user has `max_devices` already (False then).
        Atomic: concurrent adds never exceed the limit. Publishes the user."""

    async def device(self, device_id: str) -> Device | None: ...

    async def devices(self, user: str) -> list[Device]:
        """The user's devices, oldest first."""

    async def remove_device(self, device_id: str) -> Device | None:
        """Remove and return it (None if there was none). Publishes its user,
        so a poll of that device wakes and ends with 401."""

    async def remove_devices(self, user: str) -> int:
        """Remove every device of `user` (account deleted); how many. Publishes."""

    async def touch_device(self, device_id: str, now: float) -> None:
        """Record `last_seen` (at most once a minute needs to reach the store;
        callers may batch). Publishes nothing."""

    # --- pairing codes --------------------------------------------------------
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None:
        """Keep `pairing` under `code_hash` until `pairing.expires`."""

    async def pairing(self, code_hash: str, now: float) -> Pairing | None:
        """The pairing if it exists and has not expired. Single use is the
        caller's `claim_once(code_hash)`, before this."""

    async def drop_pairing(self, code_hash: str) -> None: ...

    # --- approval requests ----------------------------------------------------
    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None:
        """Store `request` unless its user has a live one (pending, not expired
        at `now`): then None, and nothing is written. Atomic across processes
        and replicas: of two concurrent creations for one user, one wins.
        A pending request past its expiry does not block (it may be purged or
        left to `expire_request`). Publishes the user when stored."""

    async def request(self, request_id: str) -> ApprovalRequest | None:
        """The request in any state, while it is kept (until at least its
        expiry plus a minute, so the browser can read how it ended)."""

    async def pending(self, user: str, now: float) -> list[ApprovalRequest]:
        """The user's requests in state PENDING, expired or not (the caller
        sorts out expired ones, see `expire_request`)."""

    async def resolve(self, request_id: str, state: State, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None:
        """Move a PENDING, unexpired request to `state` (APPROVED, DENIED or
        CANCELLED) and return it; None if it was not pending or has expired.
        Atomic: of two concurrent resolutions exactly one succeeds (a device
        approving while another denies, or the browser cancelling).
        Publishes the user."""

    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None:
        """Mark a PENDING request whose expiry has passed as EXPIRED and return
        it; None if it was not (so exactly one caller audits the expiry).
        Publishes nothing: devices stopped showing it at its expiry already."""


@runtime_checkable
class PulledChanges(Protocol):
    async def publish_change(self, user: str) -> None: ...

    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        """(new cursor, users changed after `cursor`). `cursor=None` asks for
        the current cursor only (users: []). When changes after `cursor` were
        already purged, users is None: every poll must look again."""


@runtime_checkable
class PushedChanges(Protocol):
    async def publish_change(self, user: str) -> None: ...

    def subscribe_changes(self) -> AsyncIterator[str | None]:
        """Users as changes are published; None after every (re)connection.
        Runs until cancelled; reconnects by itself with backoff."""
