"""JWTs: ES256 against the JWKS, HS512 shared secret, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey

from forwardauth.core import keyring
from forwardauth.tokens.jwt import JwtError, JwtSigner, keyset_from_jwks, verify

ISS = "https://auth.example.com"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, key: bytes | None, alg=hashlib.sha256) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = b"" if key is None else hmac.new(key, head.encode(), alg).digest()
    return head + "." + b64(sig)


@pytest.fixture(scope="module")
def ring():
    return keyring.generate()


@pytest.fixture(scope="module")
def signer(ring):
    return JwtSigner.es256(ring, ISS)


def app_verify(signer: JwtSigner, token: str, audience="app.example.com", now=NOW + 1):
    """What an app does: fetch the JWKS, pin ES256, check iss/aud/exp."""
    keys = keyset_from_jwks(json.loads(json.dumps(signer.public_jwks)))
    return verify(token, keys, algorithm="ES256", issuer=ISS, audience=audience, now=now)


def claims(**kw):
    return {"sub": "alice", "iss": ISS, "aud": "app.example.com", "exp": int(NOW + 60), "iat": int(NOW), **kw}


def test_round_trip_against_the_jwks(signer):
    token = signer.sign({"sub": "alice", "level": "mfa"}, audience="app.example.com", lifetime=60, now=NOW)
    got = app_verify(signer, token)
    assert got["sub"] == "alice" and got["level"] == "mfa" and got["exp"] == int(NOW + 60)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": signer.signing_key.kid}


def test_jwks_has_public_keys_only(signer, ring):
    (key,) = signer.public_jwks["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert key["kid"] == ring.signing[0].id and "d" not in key


def test_a_jwt_minted_with_joserfc_by_the_key_verifies(signer, ring):
    """Independent minting (joserfc directly, from the key ring's private key) verifies through the JWKS."""
    k = ECKey.import_key(ring.signing[0].private, {"kid": ring.signing[0].id})
    token = jose_jwt.encode({"alg": "ES256", "kid": ring.signing[0].id}, claims(), k, algorithms=["ES256"])
    assert app_verify(signer, token)["sub"] == "alice"


def test_alg_none_is_refused(signer, ring):
    token = forge({"alg": "none", "kid": ring.signing[0].id}, claims(), None)
    with pytest.raises(JwtError, match="^JWT algorithm not allowed$"):
        app_verify(signer, token)


def test_hs256_signed_with_the_public_key_is_refused(signer, ring):
    """Key confusion: an attacker HMACs with the (public) key material."""
    pem = ring.signing[0].private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    token = forge({"alg": "HS256", "kid": ring.signing[0].id}, claims(), pem)
    with pytest.raises(JwtError, match="^JWT algorithm not allowed$"):
        app_verify(signer, token)
    # Even claiming ES256 in the header, an HMAC is not an ECDSA signature.
    token = forge({"alg": "ES256", "kid": ring.signing[0].id}, claims(), pem)
    with pytest.raises(JwtError, match="^JWT refused: bad_signature$"):
        app_verify(signer, token)


def test_wrong_audience_is_refused(signer):
    token = signer.sign({"sub": "alice"}, audience="other.example.com", lifetime=60, now=NOW)
    with pytest.raises(JwtError, match="^JWT refused: invalid_claim$"):
        app_verify(signer, token)


def test_expired_is_refused(signer):
    token = signer.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW)
    with pytest.raises(JwtError, match="^JWT refused: expired_token$"):
        app_verify(signer, token, now=NOW + 61)


def test_tampered_payload_is_refused(signer):
    token = signer.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW)
    head, _, sig = token.split(".")
    body = b64(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(JwtError, match="^JWT refused: bad_signature$"):
        app_verify(signer, f"{head}.{body}.{sig}")


def test_unknown_kid_and_other_key_are_refused(signer):
    other = JwtSigner.es256(keyring.generate(), ISS)
    token = other.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW)
    with pytest.raises(JwtError, match="^JWT signed by an unknown key$"):
        app_verify(signer, token)


def test_wrong_issuer_is_refused(ring):
    token = JwtSigner.es256(ring, "https://evil.example.com").sign({"sub": "a"}, audience="app.example.com",
                                                                   lifetime=60, now=NOW)
    with pytest.raises(JwtError, match="^JWT refused: invalid_claim$"):
        app_verify(JwtSigner.es256(ring, ISS), token)


@pytest.mark.parametrize("token, message", [
    ("", "malformed JWT"),
    ("a.b", "malformed JWT"),
    ("!!!.b.c", "malformed JWT header"),
    # found by bench/fuzz.py: a header nested past json's recursion limit was a RecursionError
    (keyring.b64e(b"[" * 3000) + ".e30.c", "malformed JWT header"),
    (keyring.b64e(b'{"alg":"none","alg":"HS512","typ":"JWT"}') + ".e30.c", "malformed JWT header"),
    ("x" * 9000, "oversized JWT"),
])
def test_malformed_jwts(signer, token, message):
    with pytest.raises(JwtError) as exc:
        app_verify(signer, token)
    assert str(exc.value) == message


def test_rotation_keeps_old_jwts_verifiable(ring):
    old = JwtSigner.es256(ring, ISS)
    token = old.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW)
    new = JwtSigner.es256(keyring.rotate(ring), ISS)
    assert new.signing_key.kid != old.signing_key.kid
    assert app_verify(new, token)["sub"] == "alice"


def test_no_signing_key_says_so():
    ring = keyring.KeyRing(keyring.generate().keys)  # an old key ring file: no "signing" list
    s = JwtSigner.es256(ring, ISS)
    assert s.public_jwks == {"keys": []}
    with pytest.raises(JwtError, match="no signing key in the key ring"):
        s.sign({"sub": "a"}, audience="x", lifetime=60, now=NOW)


# --- HS512 shared-secret mode (tokens.jwt.algorithm: HS512) ----------------------

SECRET = bytes(range(64))


def test_hs512_round_trip_and_pinning():
    s = JwtSigner.hs512(SECRET, ISS)
    token = s.sign({"sub": "alice"}, audience="app", lifetime=60, now=NOW)
    assert s.verify(token, audience="app", now=NOW + 1)["sub"] == "alice"
    assert s.public_jwks == {"keys": []}  # a shared secret is never published
    # What an app holding the secret does, with joserfc directly:
    tok = jose_jwt.decode(token, OctKey.import_key(SECRET), algorithms=["HS512"])
    assert tok.header["alg"] == "HS512"


@pytest.mark.parametrize("alg, digest", [("HS256", hashlib.sha256), ("HS384", hashlib.sha384)])
def test_hs512_mode_refuses_other_hmac_algorithms(alg, digest):
    token = forge({"alg": alg}, claims(aud="app"), SECRET, digest)
    with pytest.raises(JwtError, match="^JWT algorithm not allowed$"):
        JwtSigner.hs512(SECRET, ISS).verify(token, audience="app", now=NOW + 1)


def test_hs512_mode_refuses_none_and_a_wrong_secret():
    s = JwtSigner.hs512(SECRET, ISS)
    with pytest.raises(JwtError, match="^JWT algorithm not allowed$"):
        s.verify(forge({"alg": "none"}, claims(aud="app"), None), audience="app", now=NOW + 1)
    forged = forge({"alg": "HS512"}, claims(aud="app"), bytes(64), hashlib.sha512)
    with pytest.raises(JwtError, match="^JWT refused: bad_signature$"):
        s.verify(forged, audience="app", now=NOW + 1)


def test_hs512_secret_must_be_long():
    with pytest.raises(JwtError, match="at least 64 bytes"):
        JwtSigner.hs512(b"short", ISS)


# --- signing keys in the key ring file ---------------------------------------------


def test_key_ring_file_signing_keys_round_trip_and_old_files_load(tmp_path):
    ring = keyring.generate()
    f = tmp_path / "keys.json"
    ring.save(f)
    back = keyring.KeyRing.load(f)
    assert [k.id for k in back.signing] == [k.id for k in ring.signing]
    data = json.loads(f.read_text())
    del data["signing"]
    f.write_text(json.dumps(data))  # a key ring written before signing keys existed
    old = keyring.KeyRing.load(f)
    assert old.signing == () and old.current.id == ring.current.id
    rotated = keyring.rotate(old)
    assert len(rotated.signing) == 1 and len(rotated.keys) == 2


@pytest.mark.parametrize("entry, message", [
    ({"id": "s1"}, "each signing key needs string fields 'id' and 'private'"),
    ({"id": "s1", "private": "!!"}, "private is not a base64url PKCS#8 key"),
    ({"id": "s1", "private": "AAAA", "alg": "RS256"}, "alg must be ES256"),
    ({"id": "bad id", "private": None}, "each signing key needs"),
])
def test_bad_signing_entries_are_named(tmp_path, entry, message):
    f = tmp_path / "keys.json"
    data = json.loads(keyring.generate().to_json())
    data["signing"] = [entry]
    f.write_text(json.dumps(data))
    with pytest.raises(keyring.KeyRingError) as exc:
        keyring.KeyRing.load(f)
    assert message in str(exc.value) and str(f) in str(exc.value)


def test_a_rotated_in_key_signs_only_once_published_for_the_jwks_cache_age():
    """Audit finding: the new key signed at once while apps cache the JWKS for 5 minutes."""
    from forwardauth.tokens.jwt import JWKS_MAX_AGE

    old = keyring.SigningKey("s-old", keyring.new_signing_key().private, NOW - 86400)
    new = keyring.SigningKey("s-new", keyring.new_signing_key().private, NOW)
    ring = keyring.KeyRing(keyring.generate().keys, (new, old))
    s = JwtSigner.es256(ring, ISS)
    assert [k["kid"] for k in s.public_jwks["keys"]] == ["s-new", "s-old"]  # both published at once

    def kid(token: str) -> str:
        return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]

    first = s.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW + 1)
    assert kid(first) == "s-old"
    later = s.sign({"sub": "alice"}, audience="app.example.com", lifetime=60, now=NOW + JWKS_MAX_AGE)
    assert kid(later) == "s-new"
    for token, at in ((first, NOW + 2), (later, NOW + JWKS_MAX_AGE + 1)):
        assert app_verify(s, token, now=at)["sub"] == "alice"
    fresh = keyring.KeyRing(keyring.generate().keys, (new,))  # a new ring: its only key signs
    assert kid(JwtSigner.es256(fresh, ISS).sign({"sub": "a"}, audience="x", lifetime=60, now=NOW)) == "s-new"
