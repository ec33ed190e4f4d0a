"""Accounts: validation, the record form, and the store semantics every backend shares."""

import pytest

from forwardauth.services.account_names import account_store, check_username, normalise_username
from forwardauth.state.base import AccountStore, StoreUnavailable
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account, AccountError, check_groups
from forwardauth.state.sqlite import SQLiteStore


def acct(name="alice", **kw) -> Account:
    base = {"display_name": "Alice", "email": "alice@example.com", "groups": ("staff",), "created": 10, "updated": 10,
                "password_hash": "scrypt$n=2^10,r=8,p=1$salt$hash"}
    return Account(name, **{**base, **kw})


def test_repr_hides_secrets():
    a = acct(totp_secret_enc="k1.sealed")
    assert "scrypt" not in repr(a) and "sealed" not in repr(a)


@pytest.mark.parametrize("kw, message", [
    ({"kind": "robot"}, "kind must be one of human, system, got 'robot'"),
    ({"status": "gone"}, "status must be one of active, locked, got 'gone'"),
    ({"email": "a\nb"}, "email must be at most 256 printable characters"),
    ({"display_name": "x" * 300}, "display_name must be at most 256 printable characters"),
    ({"groups": ("ok", "no spaces")}, "invalid group name 'no spaces': 1-64 of A-Z a-z 0-9 _ . : @ + -"),
])
def test_invalid_accounts(kw, message):
    with pytest.raises(AccountError) as exc:
        Account("alice", **kw)
    assert str(exc.value) == message


def test_system_accounts_have_no_password():
    with pytest.raises(AccountError, match="^system accounts cannot have a password$"):
        Account("robot", kind="system", password_hash="scrypt$x")
    robot = Account("robot", kind="system")
    assert robot.can_use_password is False
    assert acct().can_use_password is True
    assert acct(status="locked").can_use_password is False


def test_usernames_and_groups():
    assert normalise_username("  Alice ") == "alice"
    assert check_username("alice.b-c_d@x+y") == "alice.b-c_d@x+y"
    for bad in ("", "-alice", "a b", "Alice", "a" * 65, "oidc:alice"):
        with pytest.raises(AccountError):
            check_username(bad)
    assert check_groups("a, b,a") == ("a", "b")
    with pytest.raises(AccountError, match="at most 64 groups"):
        check_groups([f"g{i}" for i in range(65)])


def test_record_round_trip_and_strictness():
    a = acct(totp_secret_enc="k1.x", totp_last_step=5)
    assert Account.from_json(a.to_json()) == a
    assert Account.from_record(a.to_record()) == a
    for bad in ({}, {"v": 2}, {"v": 1, "username": "a"}, {**a.to_record(), "kind": "alien"}):
        with pytest.raises(AccountError):
            Account.from_record(bad)
    with pytest.raises(AccountError, match="^bad account record: not JSON$"):
        Account.from_json("{")


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    await s.open()
    yield s
    await s.close()


async def test_store_semantics(store):
    accounts = account_store(store)
    assert isinstance(accounts, AccountStore)
    assert await accounts.get_account("alice") is None
    assert await accounts.add_account(acct()) is True
    assert await accounts.add_account(acct(display_name="Other")) is False  # insert only
    assert (await accounts.get_account("alice")).display_name == "Alice"
    await accounts.put_account(acct(display_name="Alice L.", created=99, updated=20))
    got = await accounts.get_account("alice")
    assert (got.display_name, got.created, got.updated) == ("Alice L.", 10, 20)  # created is kept
    await accounts.put_account(Account("bob", kind="system", created=1, updated=1))  # put inserts too
    assert [a.username for a in await accounts.list_accounts()] == ["alice", "bob"]
    assert await accounts.delete_account("bob") is True
    assert await accounts.delete_account("bob") is False
    assert [a.username for a in await accounts.list_accounts()] == ["alice"]


async def test_sqlite_store_shares_accounts_between_processes(tmp_path):
    a, b = SQLiteStore(str(tmp_path / "s.db")), SQLiteStore(str(tmp_path / "s.db"))
    await a.open()
    await b.open()
    try:
        await a.add_account(acct())
        assert (await b.get_account("alice")) == acct()
    finally:
        await a.close()
        await b.close()


def test_a_backend_without_accounts_is_refused():
    class Bare:
        pass

    with pytest.raises(StoreUnavailable, match="^the Bare state backend does not hold local accounts$"):
        account_store(Bare())  # type: ignore[arg-type]


def test_names_of_existing_accounts():
    """Typed usernames, or an upstream identity's account exactly as listed ("oidc:<sub>", sub kept as is)."""
    from forwardauth.services.account_names import check_account_name, upstream_sub

    assert check_account_name("alice") == "alice"
    assert check_account_name("oidc:AbC-123/x@y") == "oidc:AbC-123/x@y"
    assert (upstream_sub("oidc:AbC-123"), upstream_sub("alice")) == ("AbC-123", None)
    for bad in ("oidc:", ":abc", "OIDC:abc", "oidc:a b", "oidc:a\x7f", "oidc:" + "x" * 300):
        with pytest.raises(AccountError, match="^an upstream identity's account is <source>:<sub>, as "
                                               "`forwardauth users list` shows it$"):
            check_account_name(bad)
    with pytest.raises(AccountError, match="^username must be"):
        check_account_name("Alice")
