"""Locking and unlocking through either CLI (`users` and `accounts`) ends in the
same state: the one account service, forwardauth.services.accounts (audit finding:
`users unlock` left an `accounts lock`ed account's epoch in the far future, so
the account could never be used again)."""

from __future__ import annotations

import asyncio
import time

import pytest

from forwardauth.state.revocations import FAR_FUTURE
from forwardauth.state.sqlite import SQLiteStore
from harness.tokens import TokenServer


@pytest.fixture
def fa(tmp_path):
    server = TokenServer(tmp_path)  # not started: the CLIs work on the state file
    server.account("alice", roles="staff")
    return server


def state(fa) -> tuple[str, float | None]:
    async def go():
        s = SQLiteStore(str(fa.workdir / "state.db"))
        try:
            a = await s.get_account("alice")
            return a.status, (await s.revocations(time.time())).epochs.get("alice")
        finally:
            await s.close()

    return asyncio.run(go())


@pytest.mark.parametrize("lock, unlock", [
    (("accounts", "lock"), ("users", "unlock")),
    (("users", "lock"), ("accounts", "unlock")),
    (("users", "lock"), ("users", "unlock")),
    (("accounts", "lock"), ("accounts", "unlock")),
])
def test_any_lock_then_any_unlock(fa, lock, unlock):
    fa.cli(*lock, "alice")
    assert state(fa) == ("locked", FAR_FUTURE)
    before = time.time()
    fa.cli(*unlock, "alice")
    status, epoch = state(fa)
    assert status == "active" and before <= epoch <= time.time()  # back to now: older credentials stay dead
    tok = fa.token("alice")  # a new one can be issued (a locked account gets none)
    assert tok.startswith("fa1_")


def test_groups_and_roles_follow_one_rule(fa):
    """A change ends the account's sessions and tokens through either CLI; no change ends nothing."""
    t0 = time.time()
    fa.cli("users", "groups", "alice", "staff,ops")
    status, e1 = state(fa)
    assert e1 is not None and e1 >= t0
    fa.cli("accounts", "roles", "alice", "--set", "staff")
    _, e2 = state(fa)
    assert e2 >= e1
    fa.cli("accounts", "roles", "alice", "--set", "staff")
    assert state(fa)[1] == e2


def test_users_delete_revokes_tokens_like_accounts_delete(fa):
    """`users delete` goes through the same deletion as `accounts delete` and the
    API: the account's tokens are revoked, so a later account of the same name
    inherits none of them."""

    fa.token("alice", "--name", "laptop")
    fa.cli("users", "delete", "alice")

    async def go():
        s = SQLiteStore(str(fa.workdir / "state.db"))
        try:
            return await s.get_account("alice"), await s.list_tokens("alice")
        finally:
            await s.close()

    account, tokens = asyncio.run(go())
    assert account is None
    assert [(t.name, t.revoked is not None) for t in tokens] == [("laptop", True)]
