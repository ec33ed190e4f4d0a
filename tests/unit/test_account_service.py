"""The account service (forwardauth.services.accounts) on real stores with a
fixed clock: what each change does, and the audit lines it writes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forwardauth.services.accounts import (
    OPERATOR,
    AccountExists,
    AccountService,
    NotFound,
    check_can_have_password,
)
from forwardauth.services.audit import EVENTS
from forwardauth.services.regulation import RegulationConfig, Regulator
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account, AccountError, SealedCreds, TokenMeta
from forwardauth.state.revocations import FAR_FUTURE
from forwardauth.state.sqlite import SQLiteStore

NOW = 1_000_000.0
HASH = "scrypt$n=2^10,r=8,p=1$salt$hash"


class Clock:
    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def lines() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(store, lines, clock) -> AccountService:
    def audit(event: str, **fields):
        assert event in EVENTS, event  # the real audit log refuses unknown events
        assert set(fields) <= {"user", "reason"}, fields
        lines.append((event, fields))

    return AccountService(store, audit, clock)


async def epochs(svc: AccountService) -> dict[str, float]:
    return (await svc.store.revocations(NOW)).epochs


# --- create ---------------------------------------------------------------------------


async def test_create_inserts_once_and_audits(svc, lines):
    a = await svc.create(OPERATOR, "alice", groups="staff, ops,staff", email="a@example.com", password_hash=HASH)
    assert (a.username, a.kind, a.groups, a.created, a.updated) == ("alice", "human", ("staff", "ops"), NOW, NOW)
    assert await svc.get("alice") == a
    r = await svc.create("root", "robot", kind="system")
    assert r.password_hash is None and r.kind == "system"
    with pytest.raises(AccountExists, match="^account alice exists$"):
        await svc.create(OPERATOR, "alice", display_name="Other")
    assert (await svc.get("alice")).display_name is None  # insert only
    assert lines == [("account_created", {"user": "alice", "reason": "human account by operator (cli)"}),
                     ("account_created", {"user": "robot", "reason": "system account by root"})]
    assert [x.username for x in await svc.list_accounts()] == ["alice", "robot"]


@pytest.mark.parametrize("name, kw, message", [
    ("oidc:abc", {}, "username must be 1-64 of a-z 0-9 . _ @ + - and start with a letter or digit"),
    ("Alice", {}, "username must be 1-64 of a-z 0-9 . _ @ + - and start with a letter or digit"),
    ("bob", {"kind": "robot"}, "kind must be one of human, system, got 'robot'"),
    ("bob", {"groups": ["a b"]}, "invalid group name 'a b': 1-64 of A-Z a-z 0-9 _ . : @ + -"),
    ("bob", {"email": "a\nb"}, "email must be at most 256 printable characters"),
    ("bob", {"kind": "system", "password_hash": HASH}, "system accounts cannot have a password"),
])
async def test_create_refuses_bad_values(svc, lines, name, kw, message):
    with pytest.raises(AccountError) as exc:
        await svc.create(OPERATOR, name, **kw)
    assert str(exc.value) == message
    assert await svc.list_accounts() == [] and lines == []


# --- password, groups ------------------------------------------------------------------


async def test_password_change_ends_sessions_and_tokens(svc, lines, clock):
    await svc.create(OPERATOR, "alice", password_hash=HASH)
    clock.t = NOW + 10
    a = await svc.set_password(OPERATOR, "alice", "scrypt$new")
    assert a.password_hash == "scrypt$new" and (await svc.get("alice")).password_hash == "scrypt$new"
    assert (await epochs(svc))["alice"] == NOW + 10
    assert lines[-1] == ("account_updated", {
        "user": "alice", "reason": "password changed by operator (cli); sessions and tokens revoked"})


async def test_who_cannot_have_a_password(svc, store):
    await svc.create(OPERATOR, "robot", kind="system")
    await store.add_account(Account("oidc:AbC", created=1, updated=1))
    for name, message in (("robot", "robot is a system account: it cannot have a password"),
                          ("oidc:AbC", "oidc:AbC holds the second factor of an upstream identity: it has no password")):
        with pytest.raises(AccountError, match=f"^{message}$"):
            check_can_have_password(await svc.need(name))
        with pytest.raises(AccountError, match=f"^{message}$"):
            await svc.set_password(OPERATOR, name, HASH)
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.set_password(OPERATOR, "ghost", HASH)
    assert await epochs(svc) == {}


async def test_groups_follow_one_rule(svc, store, lines, clock):
    """Moved here from test_accounts (it tested forwardauth.services.account_names.set_account_groups, now the service)."""
    await svc.create(OPERATOR, "alice", groups=("staff",))
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.set_groups(OPERATOR, "ghost", ["x"])
    with pytest.raises(AccountError, match="^invalid group name 'a b'"):
        await svc.set_groups(OPERATOR, "ghost", ["a b"])  # the value is checked first
    clock.t = 400.0  # an explicit `now` in the past: the epoch is at the write or later
    got, changed = await svc.set_groups("root", "alice", ["staff", "ops"], now=400.0)
    assert (got.groups, changed) == (("staff", "ops"), True)
    assert (await svc.get("alice")).groups == ("staff", "ops")
    assert (await epochs(svc))["alice"] >= 400.0  # an addition ends sessions too
    epoch = (await epochs(svc))["alice"]
    version = await store.revocation_version()
    assert await svc.set_groups("root", "alice", "staff,ops", now=500.0) == (got, False)  # unchanged
    assert (await epochs(svc))["alice"] == epoch and await store.revocation_version() == version
    _, changed = await svc.set_groups("root", "alice", [], now=600.0)
    assert changed and (await epochs(svc))["alice"] >= 600.0
    assert [x for x in lines if x[0] == "account_updated"] == [
        ("account_updated", {"user": "alice",
                             "reason": "groups set to staff,ops by root; sessions and tokens revoked"}),
        ("account_updated", {"user": "alice", "reason": "groups set to - by root; sessions and tokens revoked"})]


# --- lock, unlock ------------------------------------------------------------------------


async def ban(store, name: str) -> Regulator:
    reg = Regulator(store, RegulationConfig(max_failures=2))
    for _ in range(2):
        await reg.failed(name, "192.0.2.1", NOW)
    assert (await reg.check(name, "198.51.100.1", NOW)).banned
    return reg


async def test_lock_then_unlock(svc, store, lines, clock):
    """Moved here from test_accounts (forwardauth.services.account_names.lock_account/unlock_account), plus the ban."""
    await svc.create(OPERATOR, "alice")
    for op in (svc.lock, svc.unlock):
        with pytest.raises(NotFound, match="^no account 'ghost'$"):
            await op(OPERATOR, "ghost")
    locked = await svc.lock(OPERATOR, "alice", now=100.0)
    assert locked.status == "locked" and (await svc.get("alice")).status == "locked"
    assert (await store.revocations(100.0)).epochs["alice"] == FAR_FUTURE
    await store.set_epoch("alice", 200.0)  # a later "sign out everywhere" cannot shorten a lock
    assert (await store.revocations(200.0)).epochs["alice"] == FAR_FUTURE
    reg = await ban(store, "alice")
    unlocked = await svc.unlock("root", "alice", now=300.0)
    assert unlocked.status == "active" and (await svc.get("alice")).status == "active"
    assert (await store.revocations(300.0)).epochs["alice"] == 300.0  # older credentials stay dead
    assert not (await reg.check("alice", "198.51.100.1", NOW)).banned  # the ban is lifted
    assert (await store.failures("user:alice", NOW, 600))[0] == 0  # and the count forgotten
    assert lines[1:] == [
        ("account_locked", {"user": "alice", "reason": "by operator (cli); every session and token revoked"}),
        ("account_unlocked", {"user": "alice", "reason": "by root; failed-attempt ban lifted; older sessions and "
                                                         "tokens stay revoked"})]


async def test_unlock_lifts_only_that_users_ban(svc, store):
    await svc.create(OPERATOR, "alice")
    await svc.create(OPERATOR, "bob")
    await ban(store, "alice")
    reg = await ban(store, "bob")
    await svc.unlock(OPERATOR, "alice")
    assert not (await reg.check("alice", None, NOW)).banned
    assert (await reg.check("bob", None, NOW)).banned


async def test_an_upstream_identitys_account(svc, store, clock):
    """"oidc:<sub>" holds the TOTP of upstream identity <sub>, whose sessions carry the bare sub:
    locking and deleting the account end them; unlocking never lowers their epoch; the TOTP ban
    (kept under the account's name) is lifted by unlock."""
    await store.add_account(Account("oidc:AbC", totp_secret_enc="k1.x", created=1, updated=1))
    clock.t = NOW + 5
    await svc.lock(OPERATOR, "oidc:AbC")
    e = await epochs(svc)
    assert (e["oidc:AbC"], e["AbC"]) == (FAR_FUTURE, NOW + 5)
    reg = await ban(store, "oidc:AbC")
    await svc.unlock(OPERATOR, "oidc:AbC", now=NOW + 6)
    e = await epochs(svc)
    assert (e["oidc:AbC"], e["AbC"]) == (NOW + 6, NOW + 5)
    assert not (await reg.check("oidc:AbC", None, NOW)).banned
    await svc.revoke_sessions(OPERATOR, "oidc:AbC", now=NOW + 7)
    assert (await epochs(svc))["AbC"] == NOW + 7
    assert await svc.reset_totp(OPERATOR, "oidc:AbC", now=NOW + 8) is True
    assert (await epochs(svc))["AbC"] == NOW + 8
    await svc.delete(OPERATOR, "oidc:AbC", now=NOW + 9)
    e = await epochs(svc)
    assert (e["oidc:AbC"], e["AbC"]) == (NOW + 9, NOW + 9) and await svc.get("oidc:AbC") is None


# --- delete ------------------------------------------------------------------------------


def token(tid: str, account: str, created: float = NOW - 100) -> TokenMeta:
    return TokenMeta(tid, account, "t-" + tid[:2], "k1", "password", created, NOW + 3600, "root")


async def test_delete_leaves_nothing_valid(svc, store, lines):
    await svc.create(OPERATOR, "backup", kind="system")
    old = token("00000000-0000-4000-8000-000000000001", "backup")
    live = token("00000000-0000-4000-8000-000000000002", "backup")
    other = token("00000000-0000-4000-8000-000000000003", "alice")
    for t in (old, live, other):
        await store.put_token(t)
    await store.revoke_token(old.id, NOW - 50)
    await store.put_dbcreds("backup", SealedCreds("sealed", NOW, "root"))
    await svc.delete("root", "backup", now=NOW + 1)
    assert await svc.get("backup") is None
    assert await store.get_dbcreds("backup") is None
    assert (await store.get_token(live.id)).revoked == NOW + 1
    assert (await store.get_token(old.id)).revoked == NOW - 50  # revoked before: left as it was
    assert (await store.get_token(other.id)).revoked is None  # someone else's
    snap = await store.revocations(NOW + 1)
    assert snap.epochs["backup"] == NOW + 1 and live.id in snap.revoked and other.id not in snap.revoked
    assert lines[1:] == [
        ("token_revoked", {"user": "backup", "reason": f"token {live.id} (t-00): account deleted by root"}),
        ("account_deleted", {"user": "backup", "reason": "by root; tokens, sessions, approving devices and database credentials removed"})]
    with pytest.raises(NotFound, match="^no account 'backup'$"):
        await svc.delete("root", "backup")
    # A namesake inherits nothing: no credentials, and no token or session from before.
    await svc.create(OPERATOR, "backup", kind="system")
    assert await store.get_dbcreds("backup") is None
    assert (await store.revocations(NOW + 2)).epochs["backup"] == NOW + 1


# --- TOTP, revoke sessions -----------------------------------------------------------


async def test_totp_set_replace_reset(svc, lines, clock):
    await svc.create(OPERATOR, "alice")
    await svc.create(OPERATOR, "robot", kind="system")
    with pytest.raises(AccountError, match="^robot is a system account: it signs in with API tokens only$"):
        await svc.set_totp(OPERATOR, "robot", "k1.x")
    assert await svc.set_totp(OPERATOR, "alice", "k1.one") is False
    assert "alice" not in await epochs(svc)  # a first secret ends nothing
    clock.t = NOW + 3
    assert await svc.set_totp(OPERATOR, "alice", "k1.two") is True
    a = await svc.get("alice")
    assert (a.totp_secret_enc, a.totp_last_step, (await epochs(svc))["alice"]) == ("k1.two", 0, NOW + 3)
    assert await svc.reset_totp(OPERATOR, "alice", now=NOW + 4) is True
    assert (await svc.get("alice")).totp_secret_enc is None and (await epochs(svc))["alice"] == NOW + 4
    n = len(lines)
    assert await svc.reset_totp(OPERATOR, "alice") is False and len(lines) == n  # nothing to reset
    assert lines[2:] == [
        ("totp_enrolled", {"user": "alice", "reason": "by operator (cli)"}),
        ("totp_enrolled", {"user": "alice", "reason": "by operator (cli); replaced; sessions and tokens revoked"}),
        ("totp_reset", {"user": "alice", "reason": "by operator (cli); sessions and tokens revoked"})]


async def test_revoke_sessions(svc, lines):
    await svc.create(OPERATOR, "alice")
    assert await svc.revoke_sessions("root", "alice", now=NOW + 7) == NOW + 7
    assert await svc.revoke_sessions("root", "alice", now=NOW + 1) == NOW + 7  # an epoch never goes down
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.revoke_sessions("root", "ghost")
    assert lines[-1] == ("session_revoked", {"user": "alice", "reason": "sessions and tokens revoked by root"})


def test_the_service_loads_no_web_stack():
    """Services sit below the parts: importing one loads no aiohttp and no part."""
    code = ("import sys, forwardauth.services.accounts; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp' "
            "or m.startswith(('forwardauth.signin', 'forwardauth.tokens', 'forwardauth.oidc', 'forwardauth.api'))); "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_delete_removes_the_passkeys_and_security_keys(svc, store, lines):
    from forwardauth.state.records import WebAuthnCredential

    await svc.create(OPERATOR, "alice")
    for i in (1, 2):
        await store.add_webauthn_credential(WebAuthnCredential(bytes([i]) * 16, "alice", b"h" * 32, b"k", 1, f"key {i}",
                                                               NOW), 10)
    await store.add_webauthn_credential(WebAuthnCredential(b"\x09" * 16, "bob", b"h" * 32, b"k", 1, "bob's", NOW), 10)
    await svc.delete("root", "alice", now=NOW + 1)
    assert await store.webauthn_credentials("alice") == []
    assert [c.name for c in await store.webauthn_credentials("bob")] == ["bob's"]
    assert lines[-1] == ("account_deleted", {"user": "alice", "reason": "by root; tokens, sessions, approving devices "
                                                                       "and database credentials removed; 2 security "
                                                                       "key(s) and passkey(s) removed"})
    # A namesake inherits none of them.
    await svc.create(OPERATOR, "alice")
    assert await store.webauthn_credentials("alice") == []
