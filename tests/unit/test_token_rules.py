"""Who may issue, revoke and read what; the service applying it on a real (memory) store."""

from __future__ import annotations

import pytest

from forwardauth.core.keyring import Key, KeyRing
from forwardauth.services.audit import EVENTS
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account, Device
from forwardauth.state.revocations import FAR_FUTURE, Revocations
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens import rules
from forwardauth.tokens.rules import Actor, Target
from forwardauth.tokens.service import OPERATOR, Denied, Invalid, NotFound, TokenService, actor_of

from .conftest import make_config

ADMIN = Actor("root", "human", ("admin",))
ALICE = Actor("alice", "human", ("backup",))  # holds the role named after service account "backup"
BOB = Actor("bob", "human", ())
BACKUP = Target("backup", "system")
DEPLOY = Target("deploy", "system")


@pytest.mark.parametrize(
    "actor, target, expected",
    [
        (ADMIN, BACKUP, True),
        (ADMIN, Target("bob", "human"), True),
        (ALICE, BACKUP, True),  # role named after the service account
        (ALICE, DEPLOY, False),
        (BOB, BACKUP, False),
        (BOB, Target("bob", "human"), True),  # a human issues their own
        (BOB, Target("alice", "human"), False),
        (Actor("backup", "system", ("backup",)), BACKUP, False),  # a service account cannot mint for itself
        (Actor("root", "human", ("admin",), active=False), BACKUP, False),  # locked admin
        (ADMIN, Target("backup", "system", active=False), False),  # locked target
        (Actor("admin", "human", ()), BACKUP, False),  # the *name* admin is not the role
    ],
)
def test_may_issue(actor, target, expected):
    assert rules.may_issue(actor, target) is expected


@pytest.mark.parametrize(
    "actor, owner, expected",
    [
        (ADMIN, BACKUP, True),
        (ALICE, BACKUP, False),  # the role allows issuing, not revoking
        (BOB, Target("bob", "human"), True),
        (BOB, Target("alice", "human"), False),
        (Actor("backup", "system"), BACKUP, False),
    ],
)
def test_may_revoke(actor, owner, expected):
    assert rules.may_revoke(actor, owner) is expected


@pytest.mark.parametrize(
    "actor, owner, expected",
    [
        (Actor("backup", "system"), BACKUP, True),
        (ALICE, BACKUP, True),
        (ADMIN, BACKUP, False),  # admins set, they do not read
        (BOB, BACKUP, False),
        (ALICE, Target("alice", "human"), False),  # only service accounts have database credentials
        (ALICE, Target("backup", "system", active=False), False),
    ],
)
def test_may_read_dbcreds(actor, owner, expected):
    assert rules.may_read_dbcreds(actor, owner) is expected


def test_only_admins_set_dbcreds_and_manage_accounts():
    assert rules.may_set_dbcreds(ADMIN, BACKUP) and not rules.may_set_dbcreds(ALICE, BACKUP)
    assert rules.may_admin(ADMIN) and not rules.may_admin(ALICE)


# --- the service on a memory store ------------------------------------------------

CONFIG = """
policy: {default: deny}
tokens:
  default_level: password
  levels: {backup: mfa}
  default_lifetime: 30d
  max_lifetime: 90d
"""


@pytest.fixture
async def svc():
    cfg = make_config(CONFIG)
    store = MemoryStore()
    ring = KeyRing((Key("k1", bytes(range(32))),))
    lines: list[tuple] = []
    def audit(event, **f):
        assert event in EVENTS, event  # the real audit log refuses unknown events
        lines.append((event, f))

    s = TokenService(cfg, ring, store, audit)
    s.lines = lines  # type: ignore[attr-defined]
    for a in (Account("root", groups=("admin",)), Account("alice", groups=("backup",)), Account("bob"),
              Account("backup", kind="system"), Account("deploy", kind="system")):
        await s.accounts.add_account(a)
    return s


async def test_system_account_holds_one_token(svc):
    first = await svc.issue(ADMIN, "backup", now=1000.0)
    second = await svc.issue(ALICE, "backup", now=2000.0)
    tokens = await svc.tokens.list_tokens("backup")
    assert [(t.id, t.revoked) for t in tokens] == [(first.meta.id, 2000.0), (second.meta.id, None)]
    snap = await svc.store.revocations(2000.0)
    assert first.meta.id in snap.revoked and second.meta.id not in snap.revoked
    assert [e for e, _ in svc.lines] == ["token_issued", "token_revoked", "token_issued"]


async def test_humans_hold_many_named_tokens(svc):
    await svc.issue(BOB, "bob", name="laptop")
    await svc.issue(BOB, "bob", name="ci")
    assert sorted(t.name for t in await svc.tokens.list_tokens("bob") if t.revoked is None) == ["ci", "laptop"]


async def test_role_based_issuing(svc):
    with pytest.raises(Denied, match="^alice may not issue tokens for deploy$"):
        await svc.issue(ALICE, "deploy")
    with pytest.raises(Denied, match="^bob may not issue tokens for backup$"):
        await svc.issue(BOB, "backup")
    assert svc.lines[-1][0] == "token_issued" and svc.lines[-1][1]["reason"].startswith("refused")
    assert (await svc.issue(await svc.actor("alice"), "backup")).meta.account == "backup"


async def test_levels_and_lifetimes(svc):
    assert (await svc.issue(ADMIN, "backup")).meta.level == "mfa"  # tokens.levels
    assert (await svc.issue(ADMIN, "bob")).meta.level == "password"  # tokens.default_level
    with pytest.raises(Denied, match="^tokens for bob may have level password at most$"):
        await svc.issue(ADMIN, "bob", level="mfa")
    with pytest.raises(Invalid, match="^unknown level 'root'"):
        await svc.issue(ADMIN, "bob", level="root")
    with pytest.raises(Invalid, match="^lifetime must be from 60s to 7776000s$"):
        await svc.issue(ADMIN, "bob", lifetime=91 * 86400)
    issued = await svc.issue(ADMIN, "bob", now=1000.0)
    assert issued.meta.expires == 1000.0 + 30 * 86400


async def test_issued_token_carries_its_caveats(svc):
    issued = await svc.issue(ADMIN, "backup", restrictions=("method=GET", "path=/api/read"), now=1000.0)
    m = mac.deserialize(issued.token)
    mac.verify_signature(svc.ring, m)
    assert m.caveats == ("account=backup", "level=mfa", "issued=1000", f"expires={1000 + 30 * 86400}",
                         "method=GET", "path=/api/read")


@pytest.mark.parametrize("restriction, message", [
    ("scope=all", "restriction 'scope=all': unknown caveat"),
    ("account=root", "restrictions may only be host=, path= or method="),
    ("path=relative", "restriction 'path=relative': malformed path caveat"),
])
async def test_bad_restrictions(svc, restriction, message):
    with pytest.raises(Invalid) as exc:
        await svc.issue(ADMIN, "backup", restrictions=(restriction,))
    assert str(exc.value) == message


async def test_bad_names_and_missing_accounts(svc):
    with pytest.raises(Invalid, match="^token name must be"):
        await svc.issue(ADMIN, "bob", name="\nnope")
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.issue(ADMIN, "ghost")
    with pytest.raises(NotFound, match="^no token 'nope'$"):
        await svc.revoke(ADMIN, "nope")


async def test_revoking(svc):
    t = await svc.issue(BOB, "bob")
    with pytest.raises(Denied, match="^alice may not revoke tokens of bob$"):
        await svc.revoke(ALICE, t.meta.id)
    meta = await svc.revoke(BOB, t.meta.id, now=5.0)
    assert meta.revoked == 5.0
    b = await svc.issue(ADMIN, "backup")
    with pytest.raises(Denied):
        await svc.revoke(ALICE, b.meta.id)  # role holders issue; admins revoke
    assert (await svc.revoke(ADMIN, b.meta.id)).revoked is not None


async def test_lock_sets_a_far_future_epoch(svc):
    await svc.issue(ADMIN, "backup")
    await svc.lock(OPERATOR, "backup")
    assert (await svc.account("backup")).status == "locked"
    rev = Revocations()
    await rev.refresh(svc.store)
    assert rev.epoch("backup") == FAR_FUTURE
    assert rev.is_revoked("backup", "any", 4_000_000_000.0)
    with pytest.raises(Denied, match="^root may not issue tokens for backup$"):
        await svc.issue(ADMIN, "backup")  # locked accounts get no new token
    with pytest.raises(Denied, match="^only admins may lock accounts$"):
        await svc.lock(ALICE, "deploy")


async def test_unlock_brings_the_epoch_back_to_now(svc):
    await svc.lock(OPERATOR, "backup")
    with pytest.raises(Denied, match="^only admins may unlock accounts$"):
        await svc.unlock(ALICE, "backup")
    a = await svc.unlock(OPERATOR, "backup", now=1_000.0)
    assert a.status == "active"
    rev = Revocations()
    await rev.refresh(svc.store)
    assert rev.epoch("backup") == 1_000.0
    assert rev.is_revoked("backup", "old", 999.0)  # issued before the unlock: still dead
    assert not rev.is_revoked("backup", "new", 1_001.0)
    assert (await svc.issue(ADMIN, "backup")).meta.account == "backup"


async def test_listing(svc):
    await svc.issue(ADMIN, "backup")
    assert len(await svc.list(ALICE, "backup")) == 1  # role holder sees the service account's token
    with pytest.raises(Denied, match="^bob may not list tokens of backup$"):
        await svc.list(BOB, "backup")
    with pytest.raises(Denied, match="^only admins may list every token$"):
        await svc.list(BOB, None)


async def test_dbcreds_encrypted_at_rest_and_rules(svc):
    creds = {"host": "db.internal", "port": 5432, "database": "backup", "username": "backup", "password": "s3cret!"}
    with pytest.raises(Denied):
        await svc.set_dbcreds(ALICE, "backup", creds)
    await svc.set_dbcreds(ADMIN, "backup", creds)
    stored = await svc.tokens.get_dbcreds("backup")
    assert "s3cret" not in stored.sealed and "db.internal" not in stored.sealed
    assert await svc.get_dbcreds(ALICE, "backup") == creds
    assert await svc.get_dbcreds(actor_of(await svc.account("backup")), "backup") == creds
    with pytest.raises(Denied, match="^root may not read database credentials of backup$"):
        await svc.get_dbcreds(ADMIN, "backup")
    with pytest.raises(NotFound, match="^no database credentials for deploy$"):
        await svc.get_dbcreds(Actor("deploy", "system"), "deploy")
    assert all("s3cret" not in repr(f) for _, f in svc.lines)


@pytest.mark.parametrize("creds, message", [
    ({}, "database credentials must be an object"),
    ({"host": "h", "database": "d", "username": "u", "password": "p", "pwd": "x"}, "unknown field(s): pwd"),
    ({"host": "", "database": "d", "username": "u", "password": "p"}, "host must be a non-empty string"),
    ({"host": "h", "database": "d", "username": "u", "password": "p", "port": 0}, "port must be an integer"),
    ({"host": "h", "database": "d", "username": "u", "password": "p", "port": True}, "port must be an integer"),
    ({"host": "h", "database": "d", "username": "u", "password": "p", "sslmode": "yes"}, "sslmode must be"),
])
async def test_dbcreds_validation(svc, creds, message):
    with pytest.raises(Invalid) as exc:
        await svc.set_dbcreds(ADMIN, "backup", creds)
    assert str(exc.value).startswith(message)


# --- findings of the audit ----------------------------------------------------------


async def test_the_token_name_survives_restrictions(svc):
    """The restrictions loop once reused `name`: the token was stored as 'path'."""
    issued = await svc.issue(BOB, "bob", name="laptop", restrictions=("method=GET", "path=/api/read"))
    assert issued.meta.name == "laptop"
    assert (await svc.tokens.get_token(issued.meta.id)).name == "laptop"
    assert [t.name for t in await svc.tokens.list_tokens("bob")] == ["laptop"]
    assert svc.lines[-1][1]["reason"].startswith(f"token {issued.meta.id} (laptop) by bob")


async def test_outsiders_cannot_tell_which_accounts_exist(svc):
    """The permission check comes before the lookup: the same answer for a real and a missing account."""
    for name in ("deploy", "ghost"):
        with pytest.raises(Denied, match=f"^bob may not issue tokens for {name}$"):
            await svc.issue(BOB, name)
        with pytest.raises(Denied, match=f"^bob may not list tokens of {name}$"):
            await svc.list(BOB, name)
        with pytest.raises(Denied, match=f"^bob may not read database credentials of {name}$"):
            await svc.get_dbcreds(BOB, name)
        with pytest.raises(Denied, match=f"^alice may not set database credentials for {name}$"):
            await svc.set_dbcreds(ALICE, name, {"host": "h", "database": "d", "username": "u", "password": "p"})
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.issue(ADMIN, "ghost")  # admins may know


async def test_the_operator_reads_dbcreds_as_itself(svc):
    creds = {"host": "h", "port": 5432, "database": "d", "username": "u", "password": "p"}
    await svc.set_dbcreds(OPERATOR, "backup", creds)
    assert await svc.get_dbcreds(OPERATOR, "backup") == creds
    assert svc.lines[-1] == ("dbcreds_read", {"user": "backup", "reason": "by operator (cli)"})
    with pytest.raises(NotFound, match="^no database credentials for bob"):
        await svc.get_dbcreds(OPERATOR, "bob")


async def test_a_service_account_keeps_one_token_even_when_two_issues_race(svc):
    """Two issues that both read "no active token" before either wrote: after
    the write, every active token but the newest is revoked, and the loser is told."""
    from forwardauth.state.records import TokenMeta
    from forwardauth.tokens.service import Conflict

    first = await svc.issue(ADMIN, "backup", now=1000.0)
    # Another issuer's token, written a moment later, that `first`'s issuer never saw.
    other = TokenMeta("ffffffff-0000-4000-8000-000000000000", "backup", "other", "k1", "mfa", 1000.5, 9e9, "root")
    await svc.tokens.put_token(other)
    with pytest.raises(Conflict, match="^another token for backup was issued at the same moment"):
        await svc._one_token("backup", first.meta, 1001.0)
    active = [t.id for t in await svc.tokens.list_tokens("backup") if t.revoked is None]
    assert active == [other.id]
    assert first.meta.id in (await svc.store.revocations(1001.0)).revoked


async def test_role_changes_end_sessions_and_tokens(svc):
    a = await svc.set_roles(ADMIN, "alice", ["backup", "reports"], now=500.0)
    assert a.groups == ("backup", "reports")
    rev = Revocations()
    await rev.refresh(svc.store)
    assert rev.epoch("alice") >= 500.0
    v = await svc.store.revocation_version()
    assert (await svc.set_roles(ADMIN, "alice", ["backup", "reports"])).groups == ("backup", "reports")
    assert await svc.store.revocation_version() == v  # the same roles again: nothing ends
    with pytest.raises(Denied, match="^only admins may change roles$"):
        await svc.set_roles(ALICE, "bob", [])
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.set_roles(ADMIN, "ghost", [])
    with pytest.raises(Invalid, match="^roles: invalid group name 'a b'"):
        await svc.set_roles(ADMIN, "alice", ["a b"])


async def test_revoke_sessions(svc):
    assert await svc.revoke_sessions(BOB, "bob", now=700.0) == 700.0  # oneself
    assert await svc.revoke_sessions(ADMIN, "alice", now=800.0) == 800.0
    with pytest.raises(Denied, match="^bob may not revoke the sessions of alice$"):
        await svc.revoke_sessions(BOB, "alice")
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.revoke_sessions(ADMIN, "ghost")
    assert svc.lines[-1] == ("session_revoked", {"user": "alice", "reason": "sessions and tokens revoked by root"})


async def test_delete_leaves_nothing_for_a_namesake(svc):
    """Tokens revoked, dbcreds and approving devices deleted, epoch raised: a new
    account of the same name inherits nothing."""
    t = await svc.issue(ADMIN, "backup", now=1000.0)
    assert await svc.store.add_device(Device("device-backup0001", "backup", "phone", 900.0, "h"), 5)
    await svc.set_dbcreds(ADMIN, "backup", {"host": "h", "database": "d", "username": "u", "password": "p"})
    with pytest.raises(Denied, match="^only admins may delete accounts$"):
        await svc.delete_account(ALICE, "backup")
    with pytest.raises(Denied, match="^an admin cannot delete their own account$"):
        await svc.delete_account(ADMIN, "root")
    await svc.delete_account(ADMIN, "backup", now=2000.0)
    assert await svc.accounts.get_account("backup") is None
    assert await svc.tokens.get_dbcreds("backup") is None
    assert await svc.store.devices("backup") == []
    assert (await svc.tokens.get_token(t.meta.id)).revoked == 2000.0
    snap = await svc.store.revocations(2000.0)
    assert snap.epochs["backup"] == 2000.0 and t.meta.id in snap.revoked
    await svc.accounts.add_account(Account("backup", kind="system"))
    with pytest.raises(NotFound, match="^no database credentials for backup$"):
        await svc.get_dbcreds(ALICE, "backup")
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.delete_account(ADMIN, "ghost")
    assert ("account_deleted", {"user": "backup", "reason": "by root; tokens, sessions, approving devices and "
                                                            "database credentials removed"}) in svc.lines


async def test_lock_and_unlock_refuse_the_admin_themselves_and_missing_accounts(svc):
    with pytest.raises(Denied, match="^an admin cannot lock their own account$"):
        await svc.lock(ADMIN, "root")
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.lock(ADMIN, "ghost")
    with pytest.raises(NotFound, match="^no account 'ghost'$"):
        await svc.unlock(ADMIN, "ghost")
