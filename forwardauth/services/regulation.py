"""Brute-force regulation: failures counted per user and per client address.

After `max_failures` failed sign-ins for one username (or
`max_client_failures` from one client address) within `window`, further
attempts for that username (or from that address) are refused for
`ban_time`, without looking at the password. Each attempt is counted before
its credential is checked (`Regulator.reserve`), so parallel requests cannot
slip past the limit. Counters are kept by username
whether or not the account exists, so the answer (and the work done) is the
same for unknown and known users: nobody learns which usernames exist.

The counters live in the state store so that every process and replica sees
the same numbers; the semantics are in `forwardauth.state.base.FailureStore`.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from forwardauth.state.base import FailureStore, StateStore, StoreUnavailable


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


def client_key(client: str | None) -> str | None:
    """The counter key of a client address, or None when the address is unknown.

    IPv6 clients are counted per /64, since one host commonly holds a whole
    /64 and could rotate through it. Requests whose address is unknown are
    counted per username only: one shared counter for all of them would let
    a single client lock every other one out.
    """
    if not client:
        return None
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return None
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

# Counts are read over (now - window, now + _AHEAD], not (now - window, now]:
# concurrent requests stamp their entries with slightly different clocks, and
# an entry stamped a little after this request's `now` (recorded before ours,
# or after it) must still count. Otherwise two attempts could each see only
# themselves.
_AHEAD = 3600.0


@dataclass(frozen=True)
class Ticket:
    """An attempt that `reserve` let through. It is already counted as a
    failure; `passed` undoes that for a success, `failed` may start a ban."""

    username: str
    client: str | None
    now: float
    user_count: int  # failures of the username in the window, this one included
    client_count: int  # unresolved attempts of the address in the window, this one included (0: no address)


class Regulator:
    """Counting, banning and clearing, over a `FailureStore`.

    An attempt is counted *before* it is checked (`reserve`), so a burst of
    parallel requests cannot all pass a "not banned yet" check: at most
    `max_failures` attempts per username (`max_client_failures` per address)
    are ever checked within a window. Per address, attempts are counted as
    "try:" entries and successes as "ok:" entries; the difference is the
    failures, so people signing in from behind one NAT do not add up.
    """

    def __init__(self, store: FailureStore, config: RegulationConfig):
        self.store = store
        self.config = config

    async def _count(self, key: str, now: float, window: float) -> int:
        count, _ = await self.store.failures(key, now + _AHEAD, window + _AHEAD)
        return count

    async def check(self, username: str, client: str | None, now: float) -> Verdict:
        """Is the username or the client banned (at `now`, or by an attempt stamped a little later)?"""
        worst = 0.0
        keys = [user_key(username)] + ([ck] if (ck := client_key(client)) else [])
        for key in keys:
            count, latest = await self.store.failures("ban:" + key, now + _AHEAD, self.config.ban_time + _AHEAD)
            if count and latest is not None:
                worst = max(worst, min(latest + self.config.ban_time - now, self.config.ban_time))
        return Verdict(True, worst) if worst > 0 else ALLOWED

    async def _ban(self, key: str, now: float, *counters: str) -> None:
        await self.store.record_failure("ban:" + key, now, self.config.ban_time)
        for c in counters:
            await self.store.clear_failures(c)

    async def _record(self, username: str, client: str | None, now: float) -> tuple[int, int]:
        """Count one attempt for the username and the address; (user count, client count)."""
        window = self.config.window
        uk = user_key(username)
        await self.store.record_failure(uk, now, window)
        n_user = await self._count(uk, now, window)
        n_client = 0
        ck = client_key(client)
        if ck is not None:
            await self.store.record_failure("try:" + ck, now, window)
            tries = await self._count("try:" + ck, now, window)
            oks = await self._count("ok:" + ck, now, window)
            n_client = max(1, tries - oks)
        return n_user, n_client

    async def _settle_failure(self, username: str, client: str | None, now: float, n_user: int,
                              n_client: int) -> Verdict:
        banned = False
        if n_user >= self.config.max_failures:
            await self._ban(user_key(username), now, user_key(username))
            banned = True
        ck = client_key(client)
        if ck is not None and n_client >= self.config.max_client_failures:
            await self._ban(ck, now, "try:" + ck, "ok:" + ck)
            banned = True
        return Verdict(True, self.config.ban_time) if banned else ALLOWED

    async def reserve(self, username: str, client: str | None, now: float) -> tuple[Verdict, Ticket | None]:
        """Before checking a credential: refuse when banned, else count the attempt.

        Returns (verdict, ticket): a ticket when the attempt may be checked,
        None when it is refused. An attempt past a limit (only possible when
        attempts run in parallel) is refused and starts the ban.
        """
        verdict = await self.check(username, client, now)
        if verdict.banned:
            return verdict, None
        n_user, n_client = await self._record(username, client, now)
        # Again, now that this attempt is counted: a parallel attempt may have
        # started a ban meanwhile, and a ban clears the counter it came from,
        # so this attempt's count alone could look low. (A ban is recorded
        # before its counter is cleared: a count that a clear lowered is
        # always followed by this check seeing the ban.)
        verdict = await self.check(username, client, now)
        if verdict.banned:
            return verdict, None
        over_user = n_user > self.config.max_failures
        over_client = n_client > self.config.max_client_failures
        if over_user or over_client:
            await self._settle_failure(username, client, now, n_user if over_user else 0,
                                       n_client if over_client else 0)
            return Verdict(True, self.config.ban_time), None
        return ALLOWED, Ticket(username, client, now, n_user, n_client)

    async def failed(self, username: str | Ticket, client: str | None = None, now: float | None = None) -> Verdict:
        """A failed attempt. With a ticket: it is counted already; a ban starts
        when it was the last one allowed. With (username, client, now): count
        one failure now (the operator tools and tests use this form)."""
        if isinstance(username, Ticket):
            t = username
            return await self._settle_failure(t.username, t.client, t.now, t.user_count, t.client_count)
        assert now is not None
        n_user, n_client = await self._record(username, client, now)
        return await self._settle_failure(username, client, now, n_user, n_client)

    async def passed(self, ticket: Ticket, now: float) -> Verdict:
        """A credential was right. Refused (the verdict says banned) when a
        ban started meanwhile, by a parallel attempt for the username or from
        the address: the session must not be issued then. Otherwise the
        username's count is cleared and the address's attempt is resolved."""
        verdict = await self.check(ticket.username, ticket.client, max(now, ticket.now))
        if verdict.banned:
            return verdict
        await self.succeeded(ticket.username)
        ck = client_key(ticket.client)
        if ck is not None:
            await self.store.record_failure("ok:" + ck, ticket.now, self.config.window)
        return ALLOWED

    async def succeeded(self, username: str) -> None:
        """A correct password clears the username's count, not the client's
        (otherwise one valid account would reset guessing at every other)."""
        await self.store.clear_failures(user_key(username))

    async def unban(self, username: str) -> None:
        """Lift a username's ban (see `lift_ban`)."""
        await lift_ban(self.store, username)


async def lift_ban(store: FailureStore, username: str) -> None:
    """Lift a username's ban and forget its failures. Unlocking an account does
    this (forwardauth.services.accounts), whichever of `users unlock`, `accounts
    unlock` or the admin API asks. Needs no regulation settings: only the keys."""
    await store.clear_failures("ban:" + user_key(username))
    await store.clear_failures(user_key(username))
