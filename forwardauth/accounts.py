"""Local accounts: who may sign in without an upstream provider, and with what.

An account is a plain frozen value; where it lives is a state store's job.
Every backend (SQLite, memory, Redis) implements the `AccountStore` protocol
below with exactly the semantics written in its docstrings, so the sign-in
pages, the CLI and the admin API can share accounts across replicas.

Secrets are never held in clear here: `password_hash` is an scrypt record
(see `passwords`), `totp_secret_enc` is the TOTP seed sealed under the key
ring (see `totp`). `repr()` of an account hides both.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from forwardauth.state.base import StateStore, StoreUnavailable

KINDS = ("human", "system")  # system accounts never sign in with a password
STATUSES = ("active", "locked")

# Usernames people type: lower case, no spaces, no ':' (reserved for accounts
# that only hold a second factor for an upstream identity, "oidc:<sub>").
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,63}$")
MAX_KEY = 256  # any stored account name, including "source:sub" ones
MAX_FIELD = 256  # display name, email
MAX_GROUPS = 64


class AccountError(ValueError):
    """An invalid account value. The message names the field, never a secret."""


def normalise_username(text: str) -> str:
    """The canonical form of a typed username: trimmed, lower case.

    Case-folding here (not only in the store) means `Alice` and `alice` are one
    account everywhere: sign-in, regulation counters, audit lines and CLI.
    """
    return text.strip().lower()


def check_username(name: str) -> str:
    """Raise AccountError unless `name` is a valid typed username; returns it."""
    if not USERNAME_RE.match(name):
        raise AccountError(
            "username must be 1-64 of a-z 0-9 . _ @ + - and start with a letter or digit"
        )
    return name


def check_groups(groups: Any) -> tuple[str, ...]:
    """Validated, de-duplicated, order kept."""
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    out: list[str] = []
    for g in groups:
        if not isinstance(g, str) or not GROUP_RE.match(g):
            raise AccountError(f"invalid group name {g!r}: 1-64 of A-Z a-z 0-9 _ . : @ + -")
        if g not in out:
            out.append(g)
    if len(out) > MAX_GROUPS:
        raise AccountError(f"at most {MAX_GROUPS} groups")
    return tuple(out)


@dataclass(frozen=True)
class Account:
    username: str
    kind: str = "human"
    display_name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    status: str = "active"
    password_hash: str | None = field(default=None, repr=False)
    totp_secret_enc: str | None = field(default=None, repr=False)
    totp_last_step: int = 0
    created: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not 0 < len(self.username) <= MAX_KEY:
            raise AccountError("username must be 1-256 characters")
        if self.kind not in KINDS:
            raise AccountError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise AccountError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        for name in ("display_name", "email"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or len(v) > MAX_FIELD or _has_ctl(v)):
                raise AccountError(f"{name} must be at most {MAX_FIELD} printable characters")
        object.__setattr__(self, "groups", check_groups(self.groups))
        if self.kind == "system" and self.password_hash is not None:
            raise AccountError("system accounts cannot have a password")

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def can_use_password(self) -> bool:
        """Human, active and with a password set: the only accounts a password signs in."""
        return self.kind == "human" and self.active and self.password_hash is not None

    @property
    def has_totp(self) -> bool:
        return self.totp_secret_enc is not None

    def changed(self, now: float | None = None, **changes: Any) -> "Account":
        """A copy with `changes` applied and `updated` set (validation runs again)."""
        return replace(self, updated=time.time() if now is None else now, **changes)

    # --- records: the one serialised form every backend stores -------------

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (for Redis, exports). Includes the sealed secrets."""
        return {
            "v": 1,
            "username": self.username,
            "kind": self.kind,
            "display_name": self.display_name,
            "email": self.email,
            "groups": list(self.groups),
            "status": self.status,
            "password_hash": self.password_hash,
            "totp_secret_enc": self.totp_secret_enc,
            "totp_last_step": self.totp_last_step,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Account":
        """Strict inverse of `to_record`. Raises AccountError on anything odd."""
        if not isinstance(d, dict) or d.get("v") != 1:
            raise AccountError("bad account record version")
        try:
            return cls(
                username=d["username"],
                kind=d["kind"],
                display_name=d.get("display_name"),
                email=d.get("email"),
                groups=tuple(d.get("groups") or ()),
                status=d["status"],
                password_hash=d.get("password_hash"),
                totp_secret_enc=d.get("totp_secret_enc"),
                totp_last_step=int(d.get("totp_last_step") or 0),
                created=float(d.get("created") or 0.0),
                updated=float(d.get("updated") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AccountError):
                raise
            raise AccountError(f"bad account record: {exc.__class__.__name__}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_record(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Account":
        try:
            return cls.from_record(json.loads(text))
        except ValueError as exc:
            if isinstance(exc, AccountError):
                raise
            raise AccountError("bad account record: not JSON") from None


def _has_ctl(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


@runtime_checkable
class AccountStore(Protocol):
    """What a state backend implements to hold local accounts.

    Exact semantics (the SQLite, memory and Redis backends must agree):

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
    """

    async def get_account(self, name: str) -> Account | None: ...

    async def add_account(self, account: Account) -> bool: ...

    async def put_account(self, account: Account) -> None: ...

    async def delete_account(self, name: str) -> bool: ...

    async def list_accounts(self) -> list[Account]: ...

    async def claim_totp_step(self, name: str, step: int) -> bool: ...


def account_store(store: StateStore) -> AccountStore:
    """The store itself, checked to hold accounts (every shipped backend should)."""
    if not isinstance(store, AccountStore):
        raise StoreUnavailable(f"the {type(store).__name__} state backend does not hold local accounts")
    return store


# --- lock, unlock, groups: one implementation for both CLIs and the admin API ---
#
# The rules (README "Local accounts" and "API tokens"):
# - lock: status `locked` and the revocation epoch set to the far future, so
#   every session and token dies at once, and anything minted while locked is
#   dead too (seed 001: "lock editor by setting auth_epoch to deep future").
# - unlock: status `active` and the epoch brought back to *now*: sessions and
#   tokens from before the unlock stay dead; new ones work.
# - groups (roles): any change ends the account's sessions and tokens (epoch
#   to now). A session cookie carries the groups it was issued with and must
#   not keep a removed one; one rule for every change (also additions, and for
#   tokens too, whose groups are read from the account) keeps it predictable:
#   after a group change the account signs in again or gets a new token.


async def lock_account(store: StateStore, name: str, now: float | None = None) -> Account | None:
    """Lock `name`; None when there is no such account. Epoch first: if the
    status write then fails, everything is already dead (fail closed)."""
    from forwardauth.revocation import FAR_FUTURE

    acct = await account_store(store).get_account(name)
    if acct is None:
        return None
    await store.set_epoch(name, FAR_FUTURE)
    acct = acct.changed(now, status="locked")
    await account_store(store).put_account(acct)
    return acct


async def unlock_account(store: StateStore, name: str, now: float | None = None) -> Account | None:
    """Unlock `name`; None when there is no such account. The epoch first, so
    no replica sees the account active while still without the new epoch (and
    if the status write then fails, the account simply stays locked)."""
    now = time.time() if now is None else now
    acct = await account_store(store).get_account(name)
    if acct is None:
        return None
    await store.reset_epoch(name, now)
    acct = acct.changed(now, status="active")
    await account_store(store).put_account(acct)
    return acct


async def set_account_groups(store: StateStore, name: str, groups: Any,
                             now: float | None = None) -> tuple[Account, bool] | None:
    """Set the groups (roles) of `name`: (account, sessions ended), or None
    when there is no such account. A change ends the account's sessions and
    tokens; the same groups again change nothing. Raises AccountError for bad
    names."""
    now = time.time() if now is None else now
    new = check_groups(groups)
    acct = await account_store(store).get_account(name)
    if acct is None:
        return None
    if new == acct.groups:
        return acct, False
    acct = acct.changed(now, groups=new)
    await account_store(store).put_account(acct)
    # After the write, at its time or later: a session signed in meanwhile
    # (with the old groups) is older than the epoch.
    await store.set_epoch(name, max(now, time.time()))
    return acct, True
