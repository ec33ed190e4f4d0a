"""What a state store does, with the exact semantics every backend (memory,
SQLite, Redis) must share: one protocol per kind of record, and `StateStore`,
which is all of them. The records themselves are in `forwardauth.state.records`.

Every shipped backend implements every protocol, so code that holds a
`StateStore` reads and writes any record on it directly; the narrower
protocols are for code (and fakes in tests) that needs only one part.
tests/integration/test_store_contract.py asks the same questions of each.
"""

from __future__ import annotations

import abc
from typing import Callable, Protocol, runtime_checkable

from forwardauth.state.records import Account, RevocationSnapshot, SealedCreds, TokenMeta


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached or used. Never contains credentials."""


# A failure entry is swept (whatever its key) this long after it left the
# window it was recorded with: every process stamps `now` from its own clock,
# and a request whose `now` is a little behind must still see what it counts.
# (Redis keys get the same margin: EXPIRE window + 60.)
SWEEP_GRACE = 60.0


@runtime_checkable
class RevocationStore(Protocol):
    """User epochs and revoked session/token ids, polled by every process."""

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
        """Revoke one session (or token) id until `until` (when it would expire
        anyway); never shortens an earlier revocation. Entries whose `until`
        has passed may be trimmed at this point (never needed again)."""


@runtime_checkable
class ClaimStore(Protocol):
    @abc.abstractmethod
    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        """Claim `key` for `ttl` seconds from `now`: True for the first claim,
        False while that claim lasts (whichever process or replica asks).
        Atomic: of two concurrent claims exactly one gets True. Expired claims
        are purged as the store goes (never needed again). `key` is opaque (at
        most 200 characters) and should not be a secret itself: callers pass a
        hash. For one-time values such as an OIDC callback's `state`."""


@runtime_checkable
class AccountStore(Protocol):
    """Local accounts. Exact semantics:

    - Names are compared exactly (callers normalise typed usernames first).
    - `get_account(name)`: the account, or None.
    - `add_account(account)`: insert only; returns False (and changes nothing)
      when an account of that name exists. Atomic.
    - `put_account(account)`: insert or replace every field, except that
      `totp_last_step` never goes down while `totp_secret_enc` is unchanged
      (stored = max(stored, given)): a concurrent admin edit must not reopen
      a used TOTP step. When the secret changes (enrol, reset) the given
      `totp_last_step` is stored as is. `created` of an existing account is
      kept.
    - `delete_account(name)`: True when something was deleted.
    - `list_accounts()`: every account, ordered by name.
    - `claim_totp_step(name, step)`: atomically, if the account exists, has a
      TOTP secret and its `totp_last_step < step`, set it to `step` and
      return True; otherwise return False. This is what makes each code
      usable once, across processes and replicas.
    - add, put and delete bump `tokens_version` (see `TokenStore`); claiming
      a TOTP step does not.
    """

    @abc.abstractmethod
    async def get_account(self, name: str) -> Account | None: ...

    @abc.abstractmethod
    async def add_account(self, account: Account) -> bool: ...

    @abc.abstractmethod
    async def put_account(self, account: Account) -> None: ...

    @abc.abstractmethod
    async def delete_account(self, name: str) -> bool: ...

    @abc.abstractmethod
    async def list_accounts(self) -> list[Account]: ...

    @abc.abstractmethod
    async def claim_totp_step(self, name: str, step: int) -> bool: ...


@runtime_checkable
class TokenStore(Protocol):
    """Token records and service accounts' database credentials. Exact semantics:

    - `put_token(meta)`: insert (ids are fresh UUIDs) and bump the version.
    - `get_token(id)`, `list_tokens(account=None)` (ordered by created, then id).
    - `revoke_token(id, when)`: set `revoked` once; True if it was active.
    - `touch_tokens({id: t})`: last_used = max(last_used, t); no version bump
      (last use is for people to read, not for decisions).
    - `tokens_version()`: bumped by put/revoke, and by every account write
      (add/put/delete), so each replica's token index learns locks and group
      changes at once (pub/sub with Redis) or within one refresh interval.
    - `put_dbcreds`, `get_dbcreds`: one sealed blob per service account;
      `delete_dbcreds(account)`: True when there was one.
    """

    @abc.abstractmethod
    async def put_token(self, meta: TokenMeta) -> None: ...

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenMeta | None: ...

    @abc.abstractmethod
    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]: ...

    @abc.abstractmethod
    async def revoke_token(self, token_id: str, when: float) -> bool: ...

    @abc.abstractmethod
    async def touch_tokens(self, used: dict[str, float]) -> None: ...

    @abc.abstractmethod
    async def tokens_version(self) -> int: ...

    @abc.abstractmethod
    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None: ...

    @abc.abstractmethod
    async def get_dbcreds(self, account: str) -> SealedCreds | None: ...

    @abc.abstractmethod
    async def delete_dbcreds(self, account: str) -> bool: ...


@runtime_checkable
class FailureStore(Protocol):
    """Failure counters (sign-in regulation). Exact semantics:

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
    - Keys that never come back are purged by the store: SQLite and memory
      sweep entries `SWEEP_GRACE` after they left their window, on the next
      record of any key; Redis EXPIREs each key at window + `SWEEP_GRACE`.

    Times are unix seconds (floats).
    """

    @abc.abstractmethod
    async def record_failure(self, key: str, now: float, window: float) -> int: ...

    @abc.abstractmethod
    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]: ...

    @abc.abstractmethod
    async def clear_failures(self, key: str) -> None: ...


class StateStore(RevocationStore, ClaimStore, AccountStore, TokenStore, FailureStore):
    """A state backend: every protocol above, plus its lifecycle.

    A store creates whatever it needs (tables, rows) itself when it opens,
    whatever else was imported: no other part adds to its schema."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def subscribe(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call `callback()` whenever another process may have changed something
        (e.g. Redis pub/sub), so snapshots refresh at once instead of at their
        next tick. Stores without change notifications never call it."""
