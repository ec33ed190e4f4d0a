"""Local accounts: who may sign in without an upstream provider, and with what.

The account record (`Account`, validated on construction) and the
`AccountStore` protocol every backend implements are in `forwardauth.state`;
this module holds what people type (usernames) and the operations on
accounts that also touch revocations (lock, unlock, groups), written once
for both CLIs and the admin API.
"""

from __future__ import annotations

import re
import time
from typing import Any

from forwardauth.revocation import FAR_FUTURE
from forwardauth.state.base import AccountStore, StateStore, StoreUnavailable
from forwardauth.state.records import Account, AccountError, check_groups

# Usernames people type: lower case, no spaces, no ':' (reserved for accounts
# that only hold a second factor for an upstream identity, "oidc:<sub>").
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")


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


def account_store(store: StateStore) -> AccountStore:
    """The store itself, checked to hold accounts (every `StateStore` does)."""
    if not isinstance(store, AccountStore):
        raise StoreUnavailable(f"the {type(store).__name__} state backend does not hold local accounts")
    return store


# --- lock, unlock, groups: one implementation for both CLIs and the admin API ---
#
# The rules (README "Local accounts" and "API tokens"):
# - lock: status `locked` and the revocation epoch set to the far future, so
#   every session and token dies at once, and anything minted while locked is
#   dead too.
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
