"""One contract, three backends: memory, SQLite and a real Redis must agree on
every semantic the rest of forwardauth relies on (accounts, tokens and
database credentials, failure counters, epochs and revocations, WebAuthn
credentials with their atomic counter rule). The Redis
backend was only tested for revocations before; it gets the same questions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from forwardauth.services.account_names import account_store
from forwardauth.services.regulation import failure_store
from forwardauth.state.base import AccountStore, FailureStore, StateStore, TokenStore, WebAuthnStore
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import (
    Account,
    Advance,
    DuplicateCredential,
    RevocationSnapshot,
    SealedCreds,
    TokenMeta,
    TooManyCredentials,
    WebAuthnCredential,
    WebAuthnError,
)
from forwardauth.state.sqlite import SQLiteStore


@pytest.fixture
def store(any_store):
    return any_store  # memory, SQLite and Redis in turn (tests/conftest.py)


def acct(name: str = "alice", **kw) -> Account:
    return Account(name, **{"groups": ("staff",), "created": 10.0, "updated": 10.0, **kw})


def meta(i: int, account: str = "alice", created: float = 100.0, **kw) -> TokenMeta:
    return TokenMeta(f"00000000-0000-4000-8000-{i:012d}", account, f"t{i}", "k1", "password", created,
                     created + 3600, "root", **kw)


# --- accounts ------------------------------------------------------------------------------


async def test_accounts(store):
    a = account_store(store)
    assert isinstance(a, AccountStore)
    assert await a.get_account("alice") is None
    assert await a.add_account(acct()) is True
    assert await a.add_account(acct(display_name="Other")) is False  # insert only
    assert (await a.get_account("alice")).display_name is None
    await a.put_account(acct(display_name="Alice", created=99.0, updated=20.0))
    got = await a.get_account("alice")
    assert (got.display_name, got.created, got.updated) == ("Alice", 10.0, 20.0)  # created kept
    await a.put_account(Account("bob", kind="system", created=1.0, updated=1.0))  # put inserts
    assert [x.username for x in await a.list_accounts()] == ["alice", "bob"]
    assert await a.delete_account("bob") is True and await a.delete_account("bob") is False
    assert [x.username for x in await a.list_accounts()] == ["alice"]


async def test_totp_steps_never_go_back_and_are_claimed_once(store):
    a = account_store(store)
    await a.add_account(acct(totp_secret_enc="sealed-1", totp_last_step=5))
    assert await a.claim_totp_step("alice", 5) is False  # not above the last one
    assert await a.claim_totp_step("alice", 6) is True
    assert await a.claim_totp_step("alice", 6) is False  # each step once
    assert await a.claim_totp_step("ghost", 9) is False
    await a.put_account(acct(totp_secret_enc="sealed-1", totp_last_step=2))  # a stale admin edit
    assert (await a.get_account("alice")).totp_last_step == 6
    await a.put_account(acct(totp_secret_enc="sealed-2", totp_last_step=0))  # a new secret: as given
    assert (await a.get_account("alice")).totp_last_step == 0
    await a.put_account(acct(totp_secret_enc=None))
    assert await a.claim_totp_step("alice", 7) is False  # no secret, nothing to claim


# --- tokens and database credentials -------------------------------------------------------


async def test_tokens(store):
    t = store
    assert isinstance(t, TokenStore)
    v0 = await t.tokens_version()
    await t.put_token(meta(2, created=200.0))
    await t.put_token(meta(1, created=100.0))
    await t.put_token(meta(3, account="bob", created=150.0))
    assert await t.tokens_version() == v0 + 3
    assert [m.id[-1] for m in await t.list_tokens()] == ["1", "3", "2"]  # by created
    assert [m.id[-1] for m in await t.list_tokens("alice")] == ["1", "2"]
    assert await t.get_token(meta(1).id) == meta(1)
    assert await t.get_token("00000000-0000-4000-8000-999999999999") is None
    assert await t.revoke_token(meta(1).id, 500.0) is True
    assert await t.revoke_token(meta(1).id, 600.0) is False  # once
    assert await t.revoke_token("00000000-0000-4000-8000-999999999999", 1.0) is False
    assert (await t.get_token(meta(1).id)).revoked == 500.0
    assert await t.tokens_version() == v0 + 4
    await t.touch_tokens({meta(2).id: 300.0})
    await t.touch_tokens({meta(2).id: 250.0})  # never goes back
    assert (await t.get_token(meta(2).id)).last_used == 300.0
    assert await t.tokens_version() == v0 + 4  # last use moves no version


async def test_account_writes_move_the_token_version(store):
    """So every replica's token index learns locks and group changes (audit finding 5)."""
    t, a = store, account_store(store)
    v = await t.tokens_version()
    await a.add_account(acct())
    assert await t.tokens_version() > v
    v = await t.tokens_version()
    await a.put_account(acct(status="locked"))
    assert await t.tokens_version() > v
    v = await t.tokens_version()
    await a.delete_account("alice")
    assert await t.tokens_version() > v


async def test_dbcreds(store):
    t = store
    assert await t.get_dbcreds("svc") is None
    await t.put_dbcreds("svc", SealedCreds("sealed-1", 1.0, "root"))
    await t.put_dbcreds("svc", SealedCreds("sealed-2", 2.0, "root"))  # replaced
    assert await t.get_dbcreds("svc") == SealedCreds("sealed-2", 2.0, "root")
    assert await t.delete_dbcreds("svc") is True and await t.delete_dbcreds("svc") is False
    assert await t.get_dbcreds("svc") is None


# --- failure counters ---------------------------------------------------------------------


async def test_failure_counters(store):
    f = failure_store(store)
    assert isinstance(f, FailureStore)
    assert await f.failures("user:alice", 1000.0, 60.0) == (0, None)
    assert await f.record_failure("user:alice", 1000.0, 60.0) == 1
    assert await f.record_failure("user:alice", 1030.0, 60.0) == 2
    assert await f.failures("user:alice", 1030.0, 60.0) == (2, 1030.0)
    assert await f.failures("user:alice", 1060.0, 60.0) == (1, 1030.0)  # (now - window, now]: 1000 is out
    assert await f.record_failure("user:alice", 1089.0, 60.0) == 2  # 1030 still inside (1029, 1089]
    assert await f.record_failure("user:alice", 1150.0, 60.0) == 1  # 1089 is out of (1090, 1150]
    assert await f.failures("user:bob", 1090.0, 60.0) == (0, None)  # per key
    await f.clear_failures("user:alice")
    assert await f.failures("user:alice", 1090.0, 60.0) == (0, None)


# --- epochs and revocations ---------------------------------------------------------------


async def test_epochs_and_revocations(store):
    now = time.time()
    v0 = await store.revocation_version()
    assert await store.set_epoch("alice", 100.0) == 100.0
    assert await store.set_epoch("alice", 50.0) == 100.0  # only ever raised
    await store.reset_epoch("alice", 10.0)  # unlock: the one way down
    await store.revoke("sid-1", now + 60)
    await store.revoke("sid-1", now + 30)  # never shortened
    await store.revoke("tok-long", now + 500 * 86400)  # a long-lived token must not trim live entries
    snap = await store.revocations(now)
    assert snap.epochs == {"alice": 10.0}
    assert snap.revoked == {"sid-1": pytest.approx(now + 60), "tok-long": pytest.approx(now + 500 * 86400)}
    assert snap.version == v0 + 6 == await store.revocation_version()
    assert set((await store.revocations(now + 120)).revoked) == {"tok-long"}  # past its until: not listed


async def test_failure_counters_of_keys_that_never_come_back_are_purged(store):
    """Every distinct username or address that fails leaves a counter: once out of
    its window (plus 60 s for clocks), it goes without its key ever coming back."""
    f = failure_store(store)
    if isinstance(store, (MemoryStore, SQLiteStore)):
        # Swept by the next record of any key (the times are the callers').
        await f.record_failure("user:gone", 1000.0, 60.0)  # counts in (940, 1000]: kept until 1060 + 60
        await f.record_failure("ban:user:gone", 1000.0, 900.0)  # a ban: kept until 1900 + 60
        await f.record_failure("user:other", 1119.0, 60.0)
        assert await _failure_keys(store) == {"user:gone", "ban:user:gone", "user:other"}  # still in the grace
        await f.record_failure("user:other", 1120.0, 60.0)
        assert await _failure_keys(store) == {"ban:user:gone", "user:other"}
        assert await f.failures("ban:user:gone", 1120.0, 900.0) == (1, 1000.0)  # the ban still counts
        await f.record_failure("user:other", 1960.0, 60.0)
        assert await _failure_keys(store) == {"user:other"}
        assert await f.failures("user:other", 1960.0, 60.0) == (1, 1960.0)
    else:
        # Redis expires each counter itself, on its own clock: EXPIRE window + 60.
        now = time.time()
        await f.record_failure("user:gone", now, 60.0)
        await f.record_failure("ban:user:gone", now, 900.0)
        assert 110 <= await store.r.ttl("forwardauth:fail:user:gone") <= 120
        assert 950 <= await store.r.ttl("forwardauth:fail:ban:user:gone") <= 960


async def _failure_keys(store) -> set[str]:
    """The keys a backend still holds failure entries for."""
    if isinstance(store, MemoryStore):
        return set(store.failure_times)
    return {k for (k,) in await store.run(lambda c: c.execute("SELECT DISTINCT key FROM auth_failures").fetchall())}


# --- single-use claims -------------------------------------------------------------------


async def test_claim_once(store):
    assert await store.claim_once("oidc-state:a", 60.0, 1000.0) is True
    assert await store.claim_once("oidc-state:a", 60.0, 1000.0) is False  # the same key again
    assert await store.claim_once("oidc-state:a", 60.0, 1059.0) is False  # still within its ttl
    assert await store.claim_once("oidc-state:b", 60.0, 1000.0) is True  # per key


async def test_concurrent_claims_give_exactly_one_true(store):
    import asyncio

    got = await asyncio.gather(*(store.claim_once("oidc-state:race", 60.0, 1000.0) for _ in range(20)))
    assert sorted(got) == [False] * 19 + [True]


async def test_an_expired_claim_can_be_claimed_again_and_is_purged(store):
    import asyncio

    now = time.time()  # Redis expires on its own clock: real times, a short ttl
    assert await store.claim_once("oidc-state:short", 0.2, now) is True
    assert await store.claim_once("oidc-state:short", 0.2, time.time()) is False
    await asyncio.sleep(0.3)
    assert await store.claim_once("oidc-state:other", 60.0, time.time()) is True  # purges what expired
    assert await _claims(store) == {"oidc-state:other"}
    assert await store.claim_once("oidc-state:short", 0.2, time.time()) is True  # over: a new claim


async def _claims(store) -> set[str]:
    """The claims a backend still holds."""
    if isinstance(store, MemoryStore):
        return set(store.claims.until)
    if isinstance(store, SQLiteStore):
        return {k for (k,) in await store.run(lambda c: c.execute("SELECT key FROM once_claims").fetchall())}
    return {k.removeprefix("forwardauth:once:") for k in await store.r.keys("forwardauth:once:*")}


# --- a new store, versions, change notifications ------------------------------------------


async def test_a_new_store_holds_nothing_and_counts_from_zero(store):
    """Whatever was imported before: each store creates what it needs when it opens
    (SQLite used to get its token tables and `tokens_version` from the tokens part)."""
    assert isinstance(store, StateStore)
    assert (await store.revocation_version(), await store.tokens_version()) == (0, 0)
    assert await store.revocations(time.time()) == RevocationSnapshot(0)
    assert await store.list_accounts() == [] and await store.list_tokens() == []
    assert await store.get_dbcreds("svc") is None


async def test_what_moves_no_version(store):
    """Last use and TOTP steps are for people and for replay checks, not for decisions:
    they move no version (no index reload on every sign-in or token use)."""
    await store.add_account(acct(totp_secret_enc="sealed-1"))
    await store.put_token(meta(1))
    versions = (await store.revocation_version(), await store.tokens_version())
    assert await store.claim_totp_step("alice", 1) is True
    await store.touch_tokens({meta(1).id: 300.0})
    await store.touch_tokens({})
    assert await store.revoke_token("00000000-0000-4000-8000-999999999999", 1.0) is False
    await store.record_failure("user:alice", 1000.0, 60.0)
    await store.clear_failures("user:alice")
    await store.put_dbcreds("svc", SealedCreds("sealed-1", 1.0, "root"))
    await store.delete_dbcreds("svc")
    assert await store.claim_once("k", 60.0, 1000.0) is True
    assert (await store.revocation_version(), await store.tokens_version()) == versions


async def test_tokens_created_together_are_listed_by_id(store):
    for i in (3, 1, 2):
        await store.put_token(meta(i, created=100.0))
    assert [m.id[-1] for m in await store.list_tokens()] == ["1", "2", "3"]


async def test_change_notifications(store, tmp_path):
    """Redis tells every subscriber about a change made anywhere (and once on
    connecting, for what was missed); SQLite and memory have no notifications:
    their snapshots refresh on the interval only."""
    import asyncio

    from forwardauth.state.redis import RedisStore
    from forwardauth.state.sqlite import SQLiteStore as _SQLite

    calls: list[float] = []
    store.subscribe(lambda: calls.append(time.monotonic()))
    if isinstance(store, RedisStore):
        other = RedisStore(store.url)
    elif isinstance(store, _SQLite):
        other = _SQLite(store.path)
    else:
        other = store
    await other.open()
    try:
        if isinstance(store, RedisStore):
            for _ in range(200):  # connected: the first call
                if calls:
                    break
                await asyncio.sleep(0.01)
            assert calls
        seen = len(calls)
        await other.revoke("sid-1", time.time() + 60)
        await other.put_token(meta(1))
        await asyncio.sleep(0.3)
        if isinstance(store, RedisStore):
            assert len(calls) >= seen + 2  # "rev" and "tok"
        else:
            assert calls == []
    finally:
        if other is not store:
            await other.close()


# --- the whole contract ----------------------------------------------------------------------

# Each method of StateStore, with the tests above that hold every backend to it.
# A method added to the protocols (state/base.py) fails this file until it has one.
# --- WebAuthn credentials ------------------------------------------------------------


WA_NOW = 1_700_000_000.0


def wa_cred(cid: bytes, user: str = "alice", **kw) -> WebAuthnCredential:
    return WebAuthnCredential(id=cid, user=user, user_handle=b"h" * 32, public_key=b"\xa5\x01\x02",
                              sign_count=kw.pop("sign_count", 1), name=kw.pop("name", "key"),
                              created=kw.pop("created", WA_NOW), **kw)


async def test_webauthn_add_list_find(any_store):
    s = any_store
    assert isinstance(s, WebAuthnStore)
    full = wa_cred(b"\x00\xff" * 16, created=WA_NOW + 1, transports=("usb", "nfc"),
                aaguid="cb69481e-8ff7-4039-93ec-0a2729a154a8", backup_eligible=True, backed_up=True,
                user_verifying=True, discoverable=False)
    await s.add_webauthn_credential(full, 3)
    await s.add_webauthn_credential(wa_cred(b"1"), 3)
    await s.add_webauthn_credential(wa_cred(b"3", user="bob"), 3)
    assert [c.id for c in await s.webauthn_credentials("alice")] == [b"1", full.id]
    assert await s.webauthn_credential(full.id) == full  # every field round-trips
    assert (await s.webauthn_credential(b"3")).user == "bob" and await s.webauthn_credential(b"4") is None
    assert await s.webauthn_credentials("carol") == []
    with pytest.raises(DuplicateCredential) as info:
        await s.add_webauthn_credential(wa_cred(b"3"), 3)
    assert str(info.value) == "This security key or passkey is already registered."
    await s.add_webauthn_credential(wa_cred(b"4"), 3)
    with pytest.raises(TooManyCredentials) as info:
        await s.add_webauthn_credential(wa_cred(b"5"), 3)
    assert str(info.value) == "You already have 3 security keys and passkeys; remove one first."
    assert len(await s.webauthn_credentials("alice")) == 3


async def test_webauthn_rename_and_remove_only_ones_own(any_store):
    s = any_store
    await s.add_webauthn_credential(wa_cred(b"1"), 10)
    await s.add_webauthn_credential(wa_cred(b"2"), 10)
    await s.add_webauthn_credential(wa_cred(b"3", user="bob"), 10)
    assert await s.rename_webauthn_credential("bob", b"1", "mine now") is False
    assert await s.rename_webauthn_credential("alice", b"1", "  Work key ") is True
    assert (await s.webauthn_credential(b"1")).name == "Work key"
    with pytest.raises(WebAuthnError):
        await s.rename_webauthn_credential("alice", b"1", "\x07")
    assert await s.remove_webauthn_credential("bob", b"1") is False
    assert await s.remove_webauthn_credential("alice", b"1") is True
    assert await s.remove_webauthn_credential("alice", b"1") is False
    assert await s.webauthn_credential(b"1") is None
    assert await s.remove_webauthn_credentials("alice") == 1
    assert await s.webauthn_credentials("alice") == [] and await s.remove_webauthn_credentials("alice") == 0
    assert [c.id for c in await s.webauthn_credentials("bob")] == [b"3"]
    await s.add_webauthn_credential(wa_cred(b"1"), 1)  # the limit counts what is left


async def test_webauthn_advance_applies_the_counter_rule(any_store):
    s = any_store
    await s.add_webauthn_credential(wa_cred(b"1", sign_count=5), 10)
    assert await s.advance_webauthn_credential(b"1", 6, True, True, WA_NOW + 1, "why") is Advance.ADVANCED
    c = await s.webauthn_credential(b"1")
    assert (c.sign_count, c.backed_up, c.user_verifying, c.last_used, c.locked) == (6, True, True, WA_NOW + 1, None)
    assert await s.advance_webauthn_credential(b"1", 7, False, False, WA_NOW + 2, "why") is Advance.ADVANCED
    c = await s.webauthn_credential(b"1")
    assert (c.sign_count, c.backed_up, c.user_verifying) == (7, False, True)  # UV capability is never forgotten
    assert await s.advance_webauthn_credential(b"1", 7, True, True, WA_NOW + 3, "went back") is Advance.REGRESSED
    c = await s.webauthn_credential(b"1")
    assert (c.sign_count, c.backed_up, c.last_used, c.locked) == (7, False, WA_NOW + 2, "went back")
    assert await s.advance_webauthn_credential(b"1", 8, False, False, WA_NOW + 4, "x") is Advance.LOCKED
    assert (await s.webauthn_credential(b"1")).sign_count == 7
    assert await s.advance_webauthn_credential(b"9", 1, False, False, WA_NOW, "x") is Advance.GONE


async def test_webauthn_zero_counters(any_store):
    s = any_store
    await s.add_webauthn_credential(wa_cred(b"1", sign_count=0), 10)
    for i in range(3):
        assert await s.advance_webauthn_credential(b"1", 0, False, True, WA_NOW + i, "x") is Advance.ADVANCED
    assert await s.advance_webauthn_credential(b"1", 3, False, True, WA_NOW + 4, "x") is Advance.ADVANCED
    assert await s.advance_webauthn_credential(b"1", 0, False, True, WA_NOW + 5, "back to 0") is Advance.REGRESSED


async def test_webauthn_one_of_two_concurrent_uses_with_one_counter_advances(any_store):
    s = any_store
    await s.add_webauthn_credential(wa_cred(b"1", sign_count=1), 10)
    results = await asyncio.gather(*(s.advance_webauthn_credential(b"1", 2, False, False, WA_NOW, "clone")
                                     for _ in range(4)))
    # One advances; the next sees the same counter again (a clone) and locks; the rest find it locked.
    assert sorted(r.value for r in results) == ["advanced", "locked", "locked", "regressed"]


async def test_webauthn_concurrent_adds_respect_the_limit(any_store):
    s = any_store
    results = await asyncio.gather(*(s.add_webauthn_credential(wa_cred(bytes([i])), 2) for i in range(5)),
                                   return_exceptions=True)
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, TooManyCredentials) for r in results if r is not None)
    assert len(await s.webauthn_credentials("alice")) == 2


async def test_webauthn_a_new_store_object_on_the_same_sqlite_file_sees_the_credentials(tmp_path):
    a = SQLiteStore(str(tmp_path / "state.db"))
    await a.add_webauthn_credential(replace(wa_cred(b"1"), locked="x"), 10)
    await a.close()
    b = SQLiteStore(str(tmp_path / "state.db"))
    assert (await b.webauthn_credential(b"1")).locked == "x"
    await b.close()


COVERED = {
    "revocation_version": "test_epochs_and_revocations", "revocations": "test_epochs_and_revocations",
    "set_epoch": "test_epochs_and_revocations", "reset_epoch": "test_epochs_and_revocations",
    "revoke": "test_epochs_and_revocations", "claim_once": "test_claim_once",
    "get_account": "test_accounts", "add_account": "test_accounts", "put_account": "test_accounts",
    "delete_account": "test_accounts", "list_accounts": "test_accounts",
    "claim_totp_step": "test_totp_steps_never_go_back_and_are_claimed_once",
    "record_failure": "test_failure_counters", "failures": "test_failure_counters",
    "clear_failures": "test_failure_counters",
    "put_token": "test_tokens", "get_token": "test_tokens", "list_tokens": "test_tokens",
    "revoke_token": "test_tokens", "touch_tokens": "test_tokens", "tokens_version": "test_tokens",
    "put_dbcreds": "test_dbcreds", "get_dbcreds": "test_dbcreds", "delete_dbcreds": "test_dbcreds",
    "webauthn_credentials": "test_webauthn_add_list_find", "webauthn_credential": "test_webauthn_add_list_find",
    "add_webauthn_credential": "test_webauthn_concurrent_adds_respect_the_limit",
    "rename_webauthn_credential": "test_webauthn_rename_and_remove_only_ones_own",
    "remove_webauthn_credential": "test_webauthn_rename_and_remove_only_ones_own",
    "remove_webauthn_credentials": "test_webauthn_rename_and_remove_only_ones_own",
    "advance_webauthn_credential": "test_webauthn_one_of_two_concurrent_uses_with_one_counter_advances",
}
# The devices' methods: their tests are in test_device_store_contract.py.
DEVICES = "test_device_store_contract."
COVERED.update({
    "add_device": DEVICES + "test_devices", "device": DEVICES + "test_devices", "devices": DEVICES + "test_devices",
    "remove_device": DEVICES + "test_devices", "remove_devices": DEVICES + "test_devices",
    "touch_device": DEVICES + "test_devices", "put_pairing": DEVICES + "test_pairings",
    "pairing": DEVICES + "test_pairings", "drop_pairing": DEVICES + "test_pairings",
    "create_request": DEVICES + "test_one_live_request_per_user", "request": DEVICES + "test_one_live_request_per_user",
    "pending": DEVICES + "test_one_live_request_per_user", "resolve": DEVICES + "test_one_live_request_per_user",
    "expire_request": DEVICES + "test_an_expired_request_does_not_block_and_expires_once",
    "publish_change": DEVICES + "test_every_change_is_on_the_feed",
})


def test_every_store_method_is_held_to_the_contract():
    import test_device_store_contract

    assert set(StateStore.__abstractmethods__) == set(COVERED)
    for test in COVERED.values():
        module, _, name = test.rpartition(".")
        assert callable(getattr(test_device_store_contract, name) if module else globals()[name]), test
