"""What the store keeps for this part. Plain frozen records, times in unix seconds."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Device:
    id: str
    user: str
    name: str
    created: float
    secret_hash: str  # SHA-256 of the credential's secret (credentials.py)
    last_seen: float | None = None

    def public(self) -> dict[str, Any]:
        """What pages, the admin API and the CLI show (never the hash)."""
        return {"id": self.id, "user": self.user, "name": self.name, "created": self.created,
                "last_seen": self.last_seen}


@dataclass(frozen=True)
class Pairing:
    """A pairing code waiting to be exchanged (stored under its hash)."""

    user: str
    created: float
    expires: float


class State(str, enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"  # on the device, or by a wrong phrase (reason says which)
    CANCELLED = "cancelled"  # by the browser that asked
    EXPIRED = "expired"


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    user: str
    host: str  # the site that asked (the original request's host)
    path: str  # and its path, without the query
    client: str | None  # the browser's address
    user_agent: str
    level: str  # the level the approval will prove
    created: float
    expires: float
    phrase: str  # the one the browser shows; never logged, never sent to the device alone
    choices: tuple[str, ...]  # what every device shows, in this order
    state: State = State.PENDING
    reason: str | None = None  # e.g. "wrong_phrase", "denied_on_device"
    decided: float | None = None
    device_id: str | None = None  # the device that decided

    def live(self, now: float) -> bool:
        """Pending and not expired: what a device is shown."""
        return self.state is State.PENDING and now < self.expires

    def outcome(self, now: float) -> State:
        """The state as the browser should see it (a pending request past its
        expiry is expired, whether or not anyone wrote that down yet)."""
        if self.state is State.PENDING and now >= self.expires:
            return State.EXPIRED
        return self.state

    def for_device(self) -> dict[str, Any]:
        """One entry of the long-poll's list: the choices, not which is right."""
        return {"id": self.id, "host": self.host, "path": self.path, "client": self.client,
                "user_agent": self.user_agent, "level": self.level, "created": self.created,
                "expires": self.expires, "phrases": list(self.choices)}
