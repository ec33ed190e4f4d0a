"""The state store interface every backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached or used. Never contains credentials."""


@dataclass(frozen=True)
class RevocationSnapshot:
    version: int
    epochs: dict[str, float] = field(default_factory=dict)  # user -> sessions issued before are dead
    revoked: dict[str, float] = field(default_factory=dict)  # session/token id -> keep until


class StateStore(abc.ABC):
    async def open(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    async def revocation_version(self) -> int:
        """A counter bumped by every revocation write: cheap to poll."""

    @abc.abstractmethod
    async def revocations(self, now: float) -> RevocationSnapshot:
        """Every epoch and every still-relevant revoked id."""

    @abc.abstractmethod
    async def set_epoch(self, user: str, epoch: float) -> float:
        """Raise the user's epoch to at least `epoch` (never lowers it); returns it."""

    @abc.abstractmethod
    async def reset_epoch(self, user: str, epoch: float) -> None:
        """Set the user's epoch to exactly `epoch`, lower or not: only unlocking
        a locked account (far-future epoch) needs this; everything else raises."""

    @abc.abstractmethod
    async def revoke(self, ident: str, until: float) -> None:
        """Revoke one session (or token) id until `until` (when it would expire anyway)."""

    @abc.abstractmethod
    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        """Claim `key` for `ttl` seconds from `now`: True for the first claim,
        False while that claim lasts (whichever process or replica asks).
        Atomic: of two concurrent claims exactly one gets True. Expired claims
        are purged as the store goes (never needed again). `key` is opaque (at
        most 200 characters) and should not be a secret itself: callers pass a
        hash. For one-time values such as an OIDC callback's `state`."""
