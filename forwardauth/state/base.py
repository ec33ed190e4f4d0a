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
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from forwardauth.state.records import (
    Account,
    Advance,
    ApprovalRequest,
    ApprovalState,
    Device,
    Pairing,
    RevocationSnapshot,
    SealedCreds,
    TokenMeta,
    WebAuthnCredential,
)


def lost_message(store: str, when: float) -> str:
    """What /readyz says after a store lost its data (see StateStore)."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    return (f"{store} lost its data at {at} (or was replaced): the revocations the running processes remembered "
            "were written back, but accounts, tokens and what no running process had seen are gone; check it, "
            "then run `forwardauth state ack`")


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


@runtime_checkable
class WebAuthnStore(Protocol):
    """Passkeys and security keys. Exact semantics:

    - A credential id belongs to one user; ids are compared as bytes.
    - `webauthn_credentials(user)`: the user's, ordered by created, then id.
    - `webauthn_credential(id)`: the credential, or None (passwordless sign-in
      starts from nothing else).
    - `add_webauthn_credential(cred, max_per_user)`: insert. Atomic: raises
      DuplicateCredential when the id exists (for anyone), TooManyCredentials
      when the user already has `max_per_user`; nothing changes then.
    - `rename_webauthn_credential(user, id, name)`: the name is checked with
      `check_credential_name` (WebAuthnError); False when the user has no such id.
    - `remove_webauthn_credential(user, id)`: False when the user has no such id.
    - `remove_webauthn_credentials(user)`: all of them (the account goes); how many.
    - `advance_webauthn_credential(id, sign_count, backed_up, user_verified, now,
      lock_reason)`: record a verified use, atomically: GONE when there is no
      such id, LOCKED when it is locked (nothing changes), REGRESSED when not
      `counter_advances(stored, sign_count)` (it is locked with `lock_reason`,
      nothing else changes), else ADVANCED (counter, backed_up, last_used = now,
      user_verifying |= user_verified). Of two concurrent uses with the same
      counter, exactly one advances.
    """

    @abc.abstractmethod
    async def webauthn_credentials(self, user: str) -> list[WebAuthnCredential]: ...

    @abc.abstractmethod
    async def webauthn_credential(self, credential_id: bytes) -> WebAuthnCredential | None: ...

    @abc.abstractmethod
    async def add_webauthn_credential(self, credential: WebAuthnCredential, max_per_user: int) -> None: ...

    @abc.abstractmethod
    async def rename_webauthn_credential(self, user: str, credential_id: bytes, name: str) -> bool: ...

    @abc.abstractmethod
    async def remove_webauthn_credential(self, user: str, credential_id: bytes) -> bool: ...

    @abc.abstractmethod
    async def remove_webauthn_credentials(self, user: str) -> int: ...

    @abc.abstractmethod
    async def advance_webauthn_credential(self, credential_id: bytes, sign_count: int, backed_up: bool,
                                          user_verified: bool, now: float, lock_reason: str) -> Advance: ...


@runtime_checkable
class DeviceStore(Protocol):
    """Approving devices, pairing codes and approval requests. Exact semantics:

    - `add_device(device, max_devices)`: add unless its user has `max_devices`
      already (False then, nothing written). Atomic: concurrent adds never
      exceed the limit.
    - `device(id)`; `devices(user)`: oldest first (created, then id).
    - `remove_device(id)`: remove and return it (None if there was none);
      `remove_devices(user)`: remove all of the user's, return how many.
    - `touch_device(id, now)`: last_seen = now, if the device exists.
    - `put_pairing(code_hash, pairing)`: keep until `pairing.expires`;
      `pairing(code_hash, now)`: the pairing if kept and `now < expires`;
      `drop_pairing(code_hash)`. Single use is the caller's `claim_once`.
    - `create_request(request, now)`: store it unless its user has a *live*
      request (PENDING and `now < expires`): then None and nothing written.
      Atomic across processes and replicas: of concurrent creations for one
      user exactly one wins.
    - `request(id)`: the request in any state while kept: at least until
      its expiry plus `KEEP_DECIDED` (so the browser can read how it ended).
    - `pending(user, now)`: the user's requests in state PENDING, expired or
      not (callers expire them, see `expire_request`), oldest first.
    - `resolve(id, state, reason, now, device_id)`: move a live request to
      APPROVED, DENIED or CANCELLED and return it; None when it is not live.
      Atomic: of concurrent resolutions exactly one succeeds.
    - `expire_request(id, now)`: mark a PENDING request with `now >= expires`
      EXPIRED and return it; None otherwise (so exactly one caller audits it).

    Change feed: a waiting long-poll lives on one process; what must wake it
    is a change of what its device would see, or of whether the device is
    still valid, made by any process. Each of these writes publishes the
    user, after (in SQLite: in the same transaction as) the write:
    add_device, remove_device(s), create_request, resolve, and the epoch
    writes `set_epoch`/`reset_epoch` (a lock, `session revoke`).
    `publish_change(user)` publishes for any other reason. A feed may
    over-report (a woken poll re-reads and answers only if its ETag changed),
    never under-report. How a process follows the feed: `PulledChanges`
    (SQLite, memory) or `PushedChanges` (Redis, memory).
    """

    @abc.abstractmethod
    async def add_device(self, device: Device, max_devices: int) -> bool: ...

    @abc.abstractmethod
    async def device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    async def devices(self, user: str) -> list[Device]: ...

    @abc.abstractmethod
    async def remove_device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    async def remove_devices(self, user: str) -> int: ...

    @abc.abstractmethod
    async def touch_device(self, device_id: str, now: float) -> None: ...

    @abc.abstractmethod
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None: ...

    @abc.abstractmethod
    async def pairing(self, code_hash: str, now: float) -> Pairing | None: ...

    @abc.abstractmethod
    async def drop_pairing(self, code_hash: str) -> None: ...

    @abc.abstractmethod
    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None: ...

    @abc.abstractmethod
    async def request(self, request_id: str) -> ApprovalRequest | None: ...

    @abc.abstractmethod
    async def pending(self, user: str, now: float) -> list[ApprovalRequest]: ...

    @abc.abstractmethod
    async def resolve(self, request_id: str, state: ApprovalState, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None: ...

    @abc.abstractmethod
    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None: ...

    @abc.abstractmethod
    async def publish_change(self, user: str) -> None: ...


KEEP_DECIDED = 60.0  # seconds an approval request is kept after its expiry


@runtime_checkable
class PulledChanges(Protocol):
    """The device change feed as a counter, read by one poller per process."""

    @abc.abstractmethod
    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        """(new cursor, users changed after `cursor`). `cursor=None` asks for
        the current cursor only (users: []). When changes after `cursor` have
        been purged already (a follower stuck for minutes), users is None:
        every poll must look again."""


@runtime_checkable
class PushedChanges(Protocol):
    """The device change feed as messages (Redis pub/sub)."""

    @abc.abstractmethod
    def subscribe_changes(self) -> AsyncIterator[str | None]:
        """Users as changes are published; None after every (re)connection,
        since messages may have been missed meanwhile. Runs until cancelled
        and reconnects by itself with backoff."""


class StateStore(RevocationStore, ClaimStore, AccountStore, TokenStore, FailureStore, WebAuthnStore,
                 DeviceStore):
    """A state backend: every protocol above, plus its lifecycle.

    A store creates whatever it needs (tables, rows) itself when it opens,
    whatever else was imported: no other part adds to its schema.

    Continuity (what a running process must never silently forget): a store
    that notices it lost its data since this process last read it (a Redis
    that came back empty, an SQLite file replaced under the server) bumps
    `losses`; the in-memory snapshots then write back what they remember
    (forwardauth.state.revocations, forwardauth.tokens.index) and call `restored()`,
    which records the loss in the store itself, so every process reports it
    (`problem()`, on /readyz) until an operator acknowledges it
    (`forwardauth state ack`). `untrusted()` says why the contents must not be
    relied on yet (a Redis store found without its marker, while running
    replicas get the time to write back what they remember)."""

    losses: int = 0  # times this process saw the store lose its data (see above)

    async def open(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def subscribe(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call `callback()` whenever another process may have changed something
        (e.g. Redis pub/sub), so snapshots refresh at once instead of at their
        next tick. Stores without change notifications never call it."""

    def problem(self) -> str | None:
        """Why /readyz must fail although the store answers (its data was lost and
        not yet acknowledged, its file was deleted), or None. Cheap: no I/O."""
        return None

    def untrusted(self) -> str | None:
        """Why what the store holds must not be relied on yet (see the class), or None."""
        return None

    async def restored(self) -> None:  # noqa: B027 - optional hook
        """The snapshots wrote back what they remembered after a loss: record the
        loss in the store, for every process to report until acknowledged."""

    async def acknowledge(self) -> str:
        """`forwardauth state ack`: an operator says the store as it is now is the
        truth (a recorded loss was checked; a new store needs no waiting). Returns
        what was done, for the command to print."""
        return "nothing to acknowledge"
