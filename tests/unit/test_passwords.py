"""scrypt password records: verification, recorded parameters, rehash, constant work."""

import hashlib
import re

import pytest

from forwardauth.core.keyring import b64d
from forwardauth.services.passwords import (
    DEFAULT_PARAMS,
    MAX_PASSWORD_CHARS,
    PasswordError,
    ScryptParams,
    dummy_verify,
    generate_password,
    hash_password,
    needs_rehash,
    parse_record,
    verify_password,
)

FAST = ScryptParams(log_n=10, r=8, p=1)


def test_default_record_names_its_parameters_and_verifies():
    rec = hash_password("correct horse battery staple")
    assert re.fullmatch(r"scrypt\$n=2\^15,r=8,p=1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}", rec), rec
    assert verify_password("correct horse battery staple", rec) is True
    assert verify_password("correct horse battery stapl", rec) is False
    assert verify_password("Correct horse battery staple", rec) is False


def test_record_is_real_scrypt_of_the_password_and_salt():
    rec = hash_password("pw-123456789", FAST)
    params, salt, digest = parse_record(rec)
    assert params == FAST
    assert digest == hashlib.scrypt(b"pw-123456789", salt=salt, n=1024, r=8, p=1, dklen=32)


def test_salts_differ_so_equal_passwords_give_different_records():
    assert hash_password("same password", FAST) != hash_password("same password", FAST)


def test_other_parameters_still_verify_and_ask_for_rehash():
    old = hash_password("s3cret-passphrase", ScryptParams(log_n=11, r=4, p=2))
    assert old.startswith("scrypt$n=2^11,r=4,p=2$")
    assert verify_password("s3cret-passphrase", old) is True
    assert needs_rehash(old, DEFAULT_PARAMS) is True
    assert needs_rehash(old, ScryptParams(log_n=11, r=4, p=2)) is False


def test_unicode_is_normalised():
    composed, decomposed = "caf\u00e9-pa\u00dfword", "cafe\u0301-pa\u00dfword"
    assert verify_password(decomposed, hash_password(composed, FAST)) is True


@pytest.mark.parametrize("record", [
    "", "plain", "scrypt$n=2^15,r=8,p=1$$", "bcrypt$2b$12$abc",
    "scrypt$n=2^40,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # absurd cost: refused, not computed
    "scrypt$n=2^15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43 + "\n",
])
def test_malformed_records_never_verify(record):
    assert verify_password("anything", record) is False
    assert needs_rehash(record) is True


def test_empty_and_oversized_passwords():
    rec = hash_password("x" * 20, FAST)
    assert verify_password("", rec) is False
    assert verify_password("x" * (MAX_PASSWORD_CHARS + 1), rec) is False
    with pytest.raises(PasswordError, match="^password is empty$"):
        hash_password("", FAST)
    with pytest.raises(PasswordError, match=f"^password is longer than {MAX_PASSWORD_CHARS} characters$"):
        hash_password("x" * (MAX_PASSWORD_CHARS + 1), FAST)


def test_error_messages_never_contain_the_password():
    secret = "hunter2-" * 200
    with pytest.raises(PasswordError) as exc:
        hash_password(secret, FAST)
    assert "hunter2" not in str(exc.value)


def test_dummy_verify_does_the_work_and_is_false(monkeypatch):
    calls = []
    real = hashlib.scrypt

    def spy(*a, **kw):
        calls.append(kw["n"])
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", spy)
    assert dummy_verify("whatever", FAST) is False
    assert dummy_verify("", FAST) is False
    assert calls[-2:] == [1024, 1024]


def test_parameter_bounds():
    with pytest.raises(ValueError):
        ScryptParams(log_n=9)
    with pytest.raises(ValueError):
        ScryptParams(r=0)


def test_generated_passwords():
    pw = generate_password()
    assert re.fullmatch(r"[a-z2-9]{5}(-[a-z2-9]{5}){3}", pw)
    assert not set(pw) & set("01ilo")
    assert len({generate_password() for _ in range(50)}) == 50
    assert b64d  # keyring helpers are the encoding used in records
