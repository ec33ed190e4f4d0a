"""Brute-force regulation: failures counted per user and per client address.

After `max_failures` failed sign-ins for one username (or
`max_client_failures` from one client address) within `window`, further
attempts for that username (or from that address) are refused for
`ban_time`, without looking at the password. Counters are kept by username
whether or not the account exists, so the answer (and the work done) is the
same for unknown and known users: nobody learns which usernames exist.

The counters live in the state store so that every process and replica sees
the same numbers; the semantics are in `FailureStore`.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from forwardauth.state.base import StateStore, StoreUnavailable


@runtime_checkable
class FailureStore(Protocol):
    """Failure counters in a state backend. Exact semantics (all backends agree):

    - A key is an opaque string (at most 300 characters).
    - `record_failure(key, now, window)`: record one failure at time `now`
      and return how many failures of `key` lie in the half-open interval
      (now - window, now], this one included. Entries at or before
      now - window may be dropped at this point (they never count again).
      Atomic: two concurrent calls return different counts.
    - `failures(key, now, window)`: (count, latest) over the same interval,
      without recording anything; `latest` is the time of the most recent
      failure in it, or None when the count is 0.
    - `clear_failures(key)`: forget every failure of `key`.

    Times are unix seconds (floats). A Redis backend can keep a sorted set
    per key (score = time, member unique), ZREMRANGEBYSCORE on record, and
    an EXPIRE of at least `window`.
    """

    async def record_failure(self, key: str, now: float, window: float) -> int: ...

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]: ...

    async def clear_failures(self, key: str) -> None: ...


def failure_store(store: StateStore) -> FailureStore:
    if not isinstance(store, FailureStore):
        raise StoreUnavailable(f"the {type(store).__name__} state backend does not hold failure counters")
    return store


@dataclass(frozen=True)
class RegulationConfig:
    max_failures: int = 5  # per username
    max_client_failures: int = 20  # per client address (a NAT hides many people)
    window: float = 600.0
    ban_time: float = 900.0


def client_key(client: str | None) -> str:
    """The counter key of a client address. IPv6 clients are counted per /64,
    since one host commonly holds a whole /64 and could rotate through it."""
    if not client:
        return "client:-"
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return "client:-"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return "client:" + str(ipaddress.ip_network(f"{addr}/64", strict=False))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return "client:" + str(addr.ipv4_mapped)
    return "client:" + str(addr)


def user_key(username: str) -> str:
    return "user:" + username[:256]


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may go ahead; when not, for how long it is refused."""

    banned: bool
    retry_after: float = 0.0  # seconds until the ban ends

    @property
    def minutes(self) -> int:
        """Whole minutes to wait, rounded up (what the page says)."""
        return max(1, math.ceil(self.retry_after / 60))


ALLOWED = Verdict(False)


class Regulator:
    """Counting, banning and clearing, over a `FailureStore`."""

    def __init__(self, store: FailureStore, config: RegulationConfig):
        self.store = store
        self.config = config

    def _keys(self, username: str, client: str | None) -> list[tuple[str, int]]:
        return [(user_key(username), self.config.max_failures), (client_key(client), self.config.max_client_failures)]

    async def check(self, username: str, client: str | None, now: float) -> Verdict:
        """Before an attempt: is the username or the client banned?"""
        worst = 0.0
        for key, _ in self._keys(username, client):
            count, latest = await self.store.failures("ban:" + key, now, self.config.ban_time)
            if count and latest is not None:
                worst = max(worst, latest + self.config.ban_time - now)
        return Verdict(True, worst) if worst > 0 else ALLOWED

    async def failed(self, username: str, client: str | None, now: float) -> Verdict:
        """After a failed attempt: count it; a ban starts when a limit is reached."""
        banned = False
        for key, limit in self._keys(username, client):
            count = await self.store.record_failure(key, now, self.config.window)
            if count >= limit:
                await self.store.record_failure("ban:" + key, now, self.config.ban_time)
                await self.store.clear_failures(key)
                banned = True
        return Verdict(True, self.config.ban_time) if banned else ALLOWED

    async def succeeded(self, username: str) -> None:
        """A correct password clears the username's count, not the client's
        (otherwise one valid account would reset guessing at every other)."""
        await self.store.clear_failures(user_key(username))

    async def unban(self, username: str) -> None:
        """Operator action (`forwardauth users unlock`): lift a username's ban."""
        await self.store.clear_failures("ban:" + user_key(username))
        await self.store.clear_failures(user_key(username))
