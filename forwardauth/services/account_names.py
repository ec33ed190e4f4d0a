"""Account names: what people type, and what names an existing account.

The account record (`Account`, validated on construction) and the
`AccountStore` protocol every backend implements are in `forwardauth.state`;
the operations on accounts (create, password, groups, lock, unlock, delete,
TOTP), written once for `users`, `accounts` and the admin API, are in
`forwardauth.services.accounts`. This module stays free of them so that
config parsing (which checks the bootstrap admin's name) loads no more
than it needs.
"""

from __future__ import annotations

import re

from forwardauth.state.base import AccountStore, StateStore, StoreUnavailable
from forwardauth.state.records import MAX_KEY, AccountError

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


# Accounts made when someone signed in through an upstream provider sets up
# TOTP are named "<source>:<sub>" (signin.service.account_key): the sub is the
# provider's, kept exactly (case included). They can be acted on, never made.
UPSTREAM_ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}:[^\s\x00-\x1f\x7f]{1,255}$")


def is_upstream_account(name: str) -> bool:
    """Whether `name` is an upstream identity's account ("<source>:<sub>"),
    which no typed username can be (usernames never hold ':')."""
    return ":" in name


def upstream_sub(name: str) -> str | None:
    """The upstream identity's <sub> of a "<source>:<sub>" account, else None.
    That identity's sessions carry the bare <sub> (and so does its epoch)."""
    return name.split(":", 1)[1] if is_upstream_account(name) else None


def check_account_name(name: str) -> str:
    """Raise AccountError unless `name` can name an existing account: a typed
    username, or an upstream identity's account exactly as listed
    ("oidc:<sub>"). Returns it."""
    if is_upstream_account(name):
        if len(name) <= MAX_KEY and UPSTREAM_ACCOUNT_RE.match(name):
            return name
        raise AccountError("an upstream identity's account is <source>:<sub>, as `forwardauth users list` shows it")
    return check_username(name)


def account_store(store: StateStore) -> AccountStore:
    """The store itself, checked to hold accounts (every `StateStore` does)."""
    if not isinstance(store, AccountStore):
        raise StoreUnavailable(f"the {type(store).__name__} state backend does not hold local accounts")
    return store
