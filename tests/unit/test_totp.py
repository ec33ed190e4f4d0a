"""TOTP: 6 digits, 30 s, one step of skew, each code once; seeds sealed at rest."""

import time
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from forwardauth.core.keyring import Key, KeyRing
from forwardauth.core.sealing import SealError
from forwardauth.signin.totp import (
    SecretBox,
    code_at,
    current_step,
    match_step,
    new_secret,
    normalise_code,
    provisioning_uri,
    qr_svg,
    qr_terminal,
)
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account
from forwardauth.state.sqlite import SQLiteStore

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
T0 = 1_700_000_000.0  # step 56666666, 20 s into it


def test_codes_match_rfc6238_reference():
    # RFC 6238 appendix B, SHA-1 seed "12345678901234567890", 8 digits -> last 6 digits
    seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    assert code_at(seed, 59 // 30) == "287082"
    assert code_at(seed, 1111111109 // 30) == "081804"
    assert code_at(seed, 1234567890 // 30) == "005924"


def test_window_is_one_step_each_side():
    step = current_step(T0)
    assert match_step(SECRET, code_at(SECRET, step), T0) == step
    assert match_step(SECRET, code_at(SECRET, step - 1), T0) == step - 1
    assert match_step(SECRET, code_at(SECRET, step + 1), T0) == step + 1
    assert match_step(SECRET, code_at(SECRET, step - 2), T0) is None
    assert match_step(SECRET, code_at(SECRET, step + 2), T0) is None


def test_agrees_with_pyotp_now():
    now = time.time()
    assert match_step(SECRET, pyotp.TOTP(SECRET).now(), now) is not None


@pytest.mark.parametrize("typed, expected", [
    ("123456", "123456"), (" 123 456 ", "123456"), ("123-456", "123456"),
    ("12345", None), ("1234567", None), ("12345a", None), ("", None), ("١٢٣٤٥٦", None), ("1" * 40, None),
])
def test_normalise_code(typed, expected):
    assert normalise_code(typed) == expected


def test_malformed_code_never_matches():
    assert match_step(SECRET, "abcdef", T0) is None
    assert match_step(SECRET, "", T0) is None


def test_provisioning_uri_and_qr():
    uri = provisioning_uri(SECRET, "alice", "Example Co")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("otpauth", "totp", "/Example%20Co:alice")
    q = parse_qs(parts.query)
    assert q["secret"] == [SECRET] and q["issuer"] == ["Example Co"]
    svg = qr_svg(uri)
    assert svg.startswith("<svg") and "<script" not in svg and "style=" not in svg

    import io

    out = io.StringIO()
    qr_terminal(uri, out)
    assert "\u2580" in out.getvalue() or "\u2584" in out.getvalue() or "\u2588" in out.getvalue()


def test_new_secrets_are_160_bit_base32():
    s = new_secret()
    assert len(s) == 32 and set(s) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert new_secret() != s


def test_sealed_seed_is_bound_to_the_account(ring: KeyRing):
    box = SecretBox(ring)
    sealed = box.seal("alice", SECRET)
    assert SECRET not in sealed
    assert box.open("alice", sealed) == SECRET
    with pytest.raises(SealError, match="^sealed for another account$"):
        box.open("bob", sealed)
    assert box.needs_reseal(sealed) is False
    rotated = SecretBox(KeyRing((Key("k2", bytes(range(1, 33))),) + ring.keys))
    assert rotated.open("alice", sealed) == SECRET and rotated.needs_reseal(sealed) is True


def test_pending_enrolment_value(ring: KeyRing):
    box = SecretBox(ring)
    v = box.seal_pending("alice", SECRET, T0, ttl=60)
    assert SECRET not in v
    assert box.open_pending("alice", v, T0 + 59) == SECRET
    assert box.open_pending("alice", v, T0 + 61) is None
    assert box.open_pending("bob", v, T0) is None
    assert box.open_pending("alice", v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1], T0) is None
    assert box.open_pending("alice", box.seal("alice", SECRET), T0) is None  # another purpose


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "state.db"))
    await s.open()
    yield s
    await s.close()


async def test_each_step_is_claimed_once(store):
    await store.add_account(Account("alice", totp_secret_enc="k1.x", created=1, updated=1))
    assert await store.claim_totp_step("alice", 100) is True
    assert await store.claim_totp_step("alice", 100) is False  # replay
    assert await store.claim_totp_step("alice", 99) is False  # older code after a newer one
    assert await store.claim_totp_step("alice", 101) is True
    assert (await store.get_account("alice")).totp_last_step == 101
    assert await store.claim_totp_step("nobody", 5) is False
    await store.add_account(Account("bob", created=1, updated=1))
    assert await store.claim_totp_step("bob", 5) is False  # no TOTP set up


async def test_concurrent_claims_only_one_wins(tmp_path):
    import asyncio

    a, b = SQLiteStore(str(tmp_path / "s.db")), SQLiteStore(str(tmp_path / "s.db"))
    await a.open()
    await b.open()
    try:
        await a.add_account(Account("alice", totp_secret_enc="k1.x", created=1, updated=1))
        results = await asyncio.gather(*[(a if i % 2 else b).claim_totp_step("alice", 500) for i in range(20)])
        assert sorted(results) == [False] * 19 + [True]
    finally:
        await a.close()
        await b.close()


async def test_an_admin_edit_does_not_reopen_a_used_step(store):
    acct = Account("alice", totp_secret_enc="k1.x", created=1, updated=1)
    await store.add_account(acct)
    assert await store.claim_totp_step("alice", 300)
    await store.put_account(acct.changed(groups=("ops",)))  # stale copy with totp_last_step=0
    got = await store.get_account("alice")
    assert got.groups == ("ops",) and got.totp_last_step == 300
    assert await store.claim_totp_step("alice", 300) is False
    # a new secret (enrol again / reset) takes the given step
    await store.put_account(got.changed(totp_secret_enc="k1.y", totp_last_step=7))
    assert (await store.get_account("alice")).totp_last_step == 7
