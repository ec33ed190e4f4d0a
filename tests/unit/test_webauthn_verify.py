"""WebAuthn verification: one test per rule, on answers of a software authenticator (tests/harness/softkey.py).

Every refusal is asserted with its exact reason, and what it did to the store
(a counter regression locks the credential; a forged assertion changes nothing).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import pytest
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import CollectedClientData

from forwardauth.core.config import parse_config
from forwardauth.state.memory import MemoryStore
from forwardauth.webauthn.service import AMR_PRESENCE, AMR_VERIFIED, WebAuthnService
from forwardauth.webauthn.settings import WebAuthnSettings
from forwardauth.webauthn.verify import Reason, Refused
from harness.softkey import SoftAuthenticator, make_attestation

from .conftest import BASE

LEVELS = parse_config(BASE + "policy: {rules: []}\n", "test.yaml").levels
ORIGIN = "https://auth.example.com"
SETTINGS = WebAuthnSettings(rp_id="example.com", origins=(ORIGIN, "https://login.example.com"),
                            level_user_verified="hardware", level_presence="mfa")


def service(settings: WebAuthnSettings = SETTINGS) -> WebAuthnService:
    return WebAuthnService(settings, LEVELS, MemoryStore())


async def register(svc: WebAuthnService, key: SoftAuthenticator, user: str = "alice", name: str = "my key",
                   **bend):
    challenge, options = await svc.start_registration(user, "sid-" + user, user, user.title(), time.time())
    return await svc.finish_registration(challenge, key.create(options, bend.pop("origin", ORIGIN), **bend), name,
                                         time.time())


async def step_up(svc: WebAuthnService, key: SoftAuthenticator, user: str = "alice", target: str = "hardware",
                  **bend):
    challenge, options = await svc.start_step_up(user, "sid-" + user, target, time.time())
    return await svc.finish_assertion(challenge, key.get(options, bend.pop("origin", ORIGIN), **bend), time.time())


async def refused(coro) -> Refused:
    with pytest.raises(Refused) as info:
        await coro
    return info.value


# -- registration --------------------------------------------------------------------------


async def test_registration_records_the_credential():
    svc, key = service(), SoftAuthenticator(backup_eligible=True, backed_up=True)
    cred = await register(svc, key, name="  Laptop passkey ")
    assert (cred.user, cred.name, cred.sign_count, cred.transports, cred.aaguid, cred.backup_eligible,
            cred.backed_up, cred.user_verifying, cred.discoverable, cred.locked) == (
        "alice", "Laptop passkey", 1, ("internal",), str(__import__("uuid").UUID(bytes=key.aaguid)), True, True,
        True, True, None)
    assert cred.id == key.credentials[0].id and cred.user_handle == key.credentials[0].user_handle
    assert await svc.store.webauthn_credentials("alice") == [cred]


async def test_registration_options():
    svc = service()
    first = await register(svc, SoftAuthenticator())
    challenge, options = await svc.start_registration("alice", "sid-alice", "alice", "Alice", time.time())
    assert options["rp"] == {"name": "forwardauth", "id": "example.com"}
    assert options["user"] == {"name": "alice", "id": websafe_encode(first.user_handle), "displayName": "Alice"}
    assert websafe_decode(options["challenge"]) == challenge.value and len(challenge.value) == 32
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -8, -257]
    assert options["excludeCredentials"] == [{"type": "public-key", "id": first.key, "transports": ["internal"]}]
    assert options["authenticatorSelection"] == {"residentKey": "preferred", "userVerification": "preferred",
                                                 "requireResidentKey": False}
    assert (options["attestation"], options["timeout"], options["extensions"]) == ("none", 120000, {"credProps": True})
    other = await svc.start_registration("bob", "sid-bob", "bob", "Bob", time.time())
    assert other[0].user_handle != first.user_handle  # random per user, never the name


async def test_registration_wrong_origin():
    r = await refused(register(service(), SoftAuthenticator(), origin="https://evil.example.net"))
    assert (r.reason, r.detail) == (Reason.ORIGIN, "'https://evil.example.net'")


async def test_registration_wrong_rp_id_hash():
    r = await refused(register(service(), SoftAuthenticator(), rp_id="evil.example.net"))
    assert r.reason is Reason.RP_ID


async def test_registration_user_presence_missing():
    r = await refused(register(service(), SoftAuthenticator(), up=False))
    assert r.reason is Reason.NOT_PRESENT


async def test_registration_user_verification_required():
    svc = service(replace(SETTINGS, user_verification="required"))
    r = await refused(register(svc, SoftAuthenticator(user_verification=False)))
    assert r.reason is Reason.NOT_VERIFIED
    assert (await register(svc, SoftAuthenticator())).user_verifying is True


async def test_registration_limits_and_duplicates():
    svc = service(replace(SETTINGS, max_credentials=2))
    key = SoftAuthenticator()
    await register(svc, key)
    await register(svc, SoftAuthenticator())
    r = await refused(svc.start_registration("alice", "sid-alice", "alice", "Alice", time.time()))
    assert (r.reason, r.detail) == (Reason.TOO_MANY, "2")
    # A credential id that is already registered (to anyone) is refused by the store, atomically.
    svc2 = service()
    alices = await register(svc2, key)
    challenge, options = await svc2.start_registration("bob", "sid-bob", "bob", "Bob", time.time())
    answer = key.create(options, ORIGIN)
    await svc2.store.add_webauthn_credential(replace(alices, id=key.credentials[-1].id), 10)
    r = await refused(svc2.finish_registration(challenge, answer, "again", time.time()))
    assert (r.reason, r.detail) == (Reason.DUPLICATE, "This security key or passkey is already registered.")
    assert [c.user for c in await svc2.store.webauthn_credentials("bob")] == []
    # An answer whose outer id is not the attested credential's.
    challenge, options = await svc2.start_registration("bob", "sid-bob", "bob", "Bob", time.time())
    answer = key.create(options, ORIGIN)
    answer["id"] = answer["rawId"] = websafe_encode(b"\x01" * 32)
    r = await refused(svc2.finish_registration(challenge, answer, "again", time.time()))
    assert (r.reason, r.detail) == (Reason.MALFORMED, "credential id differs from the attested one")


async def test_registration_bad_name_and_garbage():
    svc = service()
    challenge, options = await svc.start_registration("alice", "sid-alice", "alice", "Alice", time.time())
    r = await refused(svc.finish_registration(challenge, SoftAuthenticator().create(options, ORIGIN), "x\x00y",
                                              time.time()))
    assert (r.reason, r.detail) == (Reason.NAME, "A name is 1 to 64 printable characters.")
    for garbage in ({}, {"id": "AA", "rawId": "AA", "type": "public-key", "response": {}}, ["x"], "x",
                    {"id": "AA", "rawId": "AA", "type": "public-key",
                     "response": {"clientDataJSON": "e30", "attestationObject": "oA"}}):
        challenge, _ = await svc.start_registration("alice", "sid-alice", "alice", "Alice", time.time())
        r = await refused(svc.finish_registration(challenge, garbage, "k", time.time()))
        assert r.reason is Reason.MALFORMED


# -- attestation ------------------------------------------------------------------------------


def direct(*roots: bytes, aaguids=()) -> WebAuthnSettings:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ders = tuple(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER) for pem in roots)
    return replace(SETTINGS, attestation="direct", attestation_roots=ders,
                   aaguids=frozenset(str(__import__("uuid").UUID(bytes=a)) for a in aaguids))


async def test_attestation_direct_allowed_model():
    aaguid = bytes(range(16))
    att = make_attestation(aaguid)
    svc = service(direct(att.root_pem, aaguids=[aaguid]))
    cred = await register(svc, SoftAuthenticator(aaguid=aaguid, attestation=att))
    assert cred.aaguid == "00010203-0405-0607-0809-0a0b0c0d0e0f"


async def test_attestation_direct_aaguid_not_allowed():
    aaguid = bytes(range(16))
    att = make_attestation(aaguid)
    svc = service(direct(att.root_pem, aaguids=[bytes(16)]))
    r = await refused(register(svc, SoftAuthenticator(aaguid=aaguid, attestation=att)))
    assert (r.reason, r.detail) == (Reason.AAGUID, "00010203-0405-0607-0809-0a0b0c0d0e0f")
    assert await svc.store.webauthn_credentials("alice") == []


async def test_attestation_direct_untrusted_root_self_and_none():
    aaguid = bytes(range(16))
    att, other = make_attestation(aaguid), make_attestation(aaguid, org="Other Keys Ltd")
    svc = service(direct(other.root_pem, aaguids=[aaguid]))
    r = await refused(register(svc, SoftAuthenticator(aaguid=aaguid, attestation=att)))
    assert (r.reason, r.detail) == (Reason.ATTESTATION, "packed: UntrustedAttestation")
    r = await refused(register(svc, SoftAuthenticator(aaguid=aaguid, self_attest=True)))
    assert (r.reason, r.detail) == (Reason.ATTESTATION, "packed: UntrustedAttestation")
    r = await refused(register(svc, SoftAuthenticator(aaguid=aaguid)))
    assert (r.reason, r.detail) == (Reason.ATTESTATION, "none: UnsupportedType")
    # The certificate says another model than the authenticator data: refused by the packed rules.
    r = await refused(register(svc, SoftAuthenticator(aaguid=bytes(16), attestation=other)))
    assert (r.reason, r.detail) == (Reason.ATTESTATION, "packed: InvalidData")


# -- assertions (step-up) ----------------------------------------------------------------------


async def test_step_up_with_user_verification_proves_the_uv_level():
    svc, key = service(), SoftAuthenticator(backup_eligible=True)
    cred = await register(svc, key)
    proof = await step_up(svc, key)
    assert (proof.user, proof.level.name, proof.level.acr, proof.amr, proof.user_verified) == (
        "alice", "hardware", ("urn:acr:hwk",), AMR_VERIFIED, True)
    stored = await svc.store.webauthn_credential(cred.id)
    assert (stored.sign_count, stored.backed_up, stored.last_used is not None) == (2, False, True)
    key.backed_up = True  # synced since: BS is recorded on every use
    await step_up(svc, key)
    assert (await svc.store.webauthn_credential(cred.id)).backed_up is True


async def test_step_up_options_name_the_users_credentials():
    svc, key = service(), SoftAuthenticator(transports=("usb", "nfc"))
    cred = await register(svc, key)
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    assert options == {"challenge": websafe_encode(challenge.value), "timeout": 120000, "rpId": "example.com",
                       "allowCredentials": [{"type": "public-key", "id": cred.key, "transports": ["usb", "nfc"]}],
                       "userVerification": "required"}
    _, options = await svc.start_step_up("alice", "sid-alice", "mfa", time.time())
    assert options["userVerification"] == "preferred"  # a touch reaches mfa: the configured preference
    r = await refused(svc.start_step_up("bob", "sid-bob", "mfa", time.time()))
    assert (r.reason, r.detail) == (Reason.UNKNOWN_CREDENTIAL, "no usable credential")


async def test_presence_only_reaches_the_presence_level():
    svc, key = service(), SoftAuthenticator(user_verification=False)
    await register(svc, key)
    proof = await step_up(svc, key, target="mfa")
    assert (proof.level.name, proof.amr, proof.user_verified) == ("mfa", AMR_PRESENCE, False)


async def test_user_verification_missing_when_the_level_needs_it():
    svc, key = service(), SoftAuthenticator(user_verification=False)
    cred = await register(svc, key)
    r = await refused(step_up(svc, key, target="hardware"))
    assert r.reason is Reason.NOT_VERIFIED
    assert (await svc.store.webauthn_credential(cred.id)).sign_count == 1  # nothing recorded
    # Without a presence level, even mfa needs UV.
    svc = service(replace(SETTINGS, level_presence=None))
    await register(svc, key)
    assert (await refused(step_up(svc, key, target="mfa"))).reason is Reason.NOT_VERIFIED


async def test_user_presence_missing():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    assert (await refused(step_up(svc, key, up=False))).reason is Reason.NOT_PRESENT


async def test_wrong_origin():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    r = await refused(step_up(svc, key, origin="https://auth.example.com.evil.net"))
    assert (r.reason, r.detail) == (Reason.ORIGIN, "'https://auth.example.com.evil.net'")
    r = await refused(step_up(svc, key, origin="http://auth.example.com"))
    assert r.reason is Reason.ORIGIN
    r = await refused(step_up(svc, key, cross_origin=True))
    assert (r.reason, r.detail) == (Reason.ORIGIN, "cross-origin (in a frame of another site)")
    assert (await step_up(svc, key, origin="https://login.example.com")).level.name == "hardware"


async def test_client_data_is_read_strictly():
    """fido2 reads clientDataJSON last-key-wins: two origins (evil first, ours last) would
    pass as ours. Read strictly, it is malformed; so are NaN and a document that is no object."""
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    twice = (f'{{"type":"webauthn.get","challenge":"{options["challenge"]}","origin":"https://evil.example",'
             f'"origin":"{ORIGIN}","crossOrigin":false}}').encode()
    assert CollectedClientData(twice).origin == ORIGIN  # what fido2 alone would have read
    r = await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN, client_data_json=twice), time.time()))
    assert (r.reason, r.detail) == (Reason.MALFORMED, "client data: a key appears twice in one object")
    for raw, detail in ((b'["webauthn.get"]', "client data: not an object"),
                        (b'{"type":"webauthn.get","n":NaN}', "client data: NaN is not a JSON number"),
                        (b'{"type":"webauthn.get","o":"\xff"}', "client data: not UTF-8")):
        challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
        r = await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN, client_data_json=raw),
                                               time.time()))
        assert (r.reason, r.detail) == (Reason.MALFORMED, detail)
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    answer = key.get(options, ORIGIN)
    answer["response"]["clientDataJSON"] = "not*base64"
    r = await refused(svc.finish_assertion(challenge, answer, time.time()))
    assert (r.reason, r.detail) == (Reason.MALFORMED, "client data: not base64url")
    challenge, options = await svc.start_registration("bob", "sid-bob", "bob", "Bob", time.time())
    twice = (f'{{"type":"webauthn.create","challenge":"{options["challenge"]}","origin":"https://evil.example",'
             f'"origin":"{ORIGIN}"}}').encode()
    r = await refused(svc.finish_registration(challenge, key.create(options, ORIGIN, client_data_json=twice), "k",
                                              time.time()))
    assert (r.reason, r.detail) == (Reason.MALFORMED, "client data: a key appears twice in one object")


async def test_wrong_rp_id_hash():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    assert (await refused(step_up(svc, key, rp_id="auth.example.com"))).reason is Reason.RP_ID


async def test_wrong_challenge_and_wrong_ceremony():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    assert (await refused(step_up(svc, key, challenge=b"\x01" * 32))).reason is Reason.CHALLENGE
    assert (await refused(step_up(svc, key, ceremony="webauthn.create"))).reason is Reason.WRONG_CEREMONY


async def test_challenge_is_single_use():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    answer = key.get(options, ORIGIN)
    await svc.finish_assertion(challenge, answer, time.time())
    assert (await refused(svc.finish_assertion(challenge, answer, time.time()))).reason is Reason.CHALLENGE_USED
    # A failed answer uses it up too: one try per challenge.
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN, up=False), time.time()))
    r = await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN), time.time()))
    assert r.reason is Reason.CHALLENGE_USED
    # The old answer replayed against a new challenge: its clientData names the old one.
    challenge, _ = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    assert (await refused(svc.finish_assertion(challenge, answer, time.time()))).reason is Reason.CHALLENGE


async def test_counter_regression_locks_the_credential():
    svc, key = service(), SoftAuthenticator()
    cred = await register(svc, key)
    await step_up(svc, key, counter=7)
    r = await refused(step_up(svc, key, counter=3))
    assert (r.reason, r.detail, r.credential.id) == (Reason.COUNTER, "7 -> 3", cred.id)
    stored = await svc.store.webauthn_credential(cred.id)
    assert stored.locked == "signature counter went from 7 to 3: possible cloned authenticator"
    assert stored.sign_count == 7
    # Step-up no longer offers it, and it is locked for good: even a proper next counter is refused.
    r = await refused(svc.start_step_up("alice", "sid-alice", "hardware", time.time()))
    assert r.reason is Reason.UNKNOWN_CREDENTIAL
    other = await register(svc, SoftAuthenticator())
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    assert [c["id"] for c in options["allowCredentials"]] == [other.key]
    r = await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN, credential=key.credentials[0],
                                                              counter=8), time.time()))
    assert r.reason is Reason.LOCKED


async def test_counter_equal_and_nonzero_is_a_regression():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    await step_up(svc, key, counter=5)
    assert (await refused(step_up(svc, key, counter=5))).reason is Reason.COUNTER


async def test_counter_back_to_zero_is_a_regression():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    await step_up(svc, key, counter=5)
    assert (await refused(step_up(svc, key, counter=0))).reason is Reason.COUNTER


async def test_zero_counters_are_accepted():
    svc, key = service(), SoftAuthenticator(zero_counter=True)
    cred = await register(svc, key)
    assert cred.sign_count == 0
    for _ in range(3):
        assert (await step_up(svc, key)).level.name == "hardware"
    assert (await svc.store.webauthn_credential(cred.id)).sign_count == 0
    # A counter that starts later is fine too (0 -> 4), and then must keep going up.
    await step_up(svc, key, counter=4)
    assert (await refused(step_up(svc, key, counter=0))).reason is Reason.COUNTER


async def test_bad_signature_changes_nothing():
    svc, key = service(), SoftAuthenticator()
    cred = await register(svc, key)
    await step_up(svc, key, counter=9)
    # A forged answer with a low counter is a bad signature, never a "regression": anyone
    # who knows a credential id could otherwise lock it.
    r = await refused(step_up(svc, key, counter=2, bad_signature=True))
    assert (r.reason, r.credential.id) == (Reason.SIGNATURE, cred.id)
    stored = await svc.store.webauthn_credential(cred.id)
    assert (stored.locked, stored.sign_count) == (None, 9)
    assert (await step_up(svc, key, counter=10)).level.name == "hardware"


async def test_credential_of_another_user():
    svc, alices, bobs = service(), SoftAuthenticator(), SoftAuthenticator()
    await register(svc, alices)
    bob_cred = await register(svc, bobs, user="bob")
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    r = await refused(svc.finish_assertion(challenge, bobs.get(options, ORIGIN, credential=bobs.credentials[0]),
                                           time.time()))
    assert (r.reason, r.credential) == (Reason.OTHER_USER, None)
    assert (await svc.store.webauthn_credential(bob_cred.id)).sign_count == 1  # bob's credential untouched


async def test_unknown_credential():
    svc, key, stranger = service(), SoftAuthenticator(), SoftAuthenticator()
    await register(svc, key)
    await register(service(), stranger)  # registered elsewhere
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    r = await refused(svc.finish_assertion(challenge, stranger.get(options, ORIGIN,
                                                                   credential=stranger.credentials[0]), time.time()))
    assert r.reason is Reason.UNKNOWN_CREDENTIAL


async def test_removed_credential_no_longer_works():
    svc, key = service(), SoftAuthenticator()
    cred = await register(svc, key)
    challenge, options = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
    assert await svc.store.remove_webauthn_credential("alice", cred.id) is True
    r = await refused(svc.finish_assertion(challenge, key.get(options, ORIGIN), time.time()))
    assert r.reason is Reason.UNKNOWN_CREDENTIAL


async def test_backup_eligibility_cannot_change():
    svc, key = service(), SoftAuthenticator(backup_eligible=False)
    await register(svc, key)
    key.backup_eligible = True
    assert (await refused(step_up(svc, key))).reason is Reason.BACKUP_ELIGIBILITY


async def test_eddsa_keys():
    svc, key = service(), SoftAuthenticator(algorithm="EdDSA")
    await register(svc, key)
    assert (await step_up(svc, key)).level.name == "hardware"


async def test_garbage_assertions_are_malformed():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    for garbage in ({}, "x", {"id": "AA", "rawId": "AB", "type": "public-key", "response": {}},
                    {"id": "AA", "rawId": "AA", "type": "public-key",
                     "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"}}):
        challenge, _ = await svc.start_step_up("alice", "sid-alice", "hardware", time.time())
        assert (await refused(svc.finish_assertion(challenge, garbage, time.time()))).reason is Reason.MALFORMED


async def test_step_up_to_a_level_no_proof_reaches():
    svc = service(replace(SETTINGS, level_user_verified="mfa", level_presence=None))
    r = await refused(svc.start_step_up("alice", "sid-alice", "hardware", time.time()))
    assert (r.reason, r.detail) == (Reason.NO_LEVEL, "no WebAuthn proof reaches 'hardware'")


# -- passwordless sign-in ---------------------------------------------------------------------


async def sign_in(svc: WebAuthnService, key: SoftAuthenticator, **bend):
    challenge, options = await svc.start_sign_in(time.time())
    assert options == {"challenge": websafe_encode(challenge.value), "timeout": 120000, "rpId": "example.com",
                       "userVerification": "required"}
    return await svc.finish_assertion(challenge, key.get(options, ORIGIN, **bend), time.time())


async def test_passwordless_sign_in_names_the_user():
    svc, key = service(), SoftAuthenticator()
    await register(svc, SoftAuthenticator())
    await register(svc, key, user="bob")
    proof = await sign_in(svc, key)
    assert (proof.user, proof.level.name, proof.amr) == ("bob", "hardware", AMR_VERIFIED)


async def test_passwordless_needs_user_verification():
    svc, key = service(), SoftAuthenticator(user_verification=False)
    await register(svc, key)
    assert (await refused(sign_in(svc, key))).reason is Reason.NOT_VERIFIED


async def test_passwordless_user_handle_must_match():
    svc, key = service(), SoftAuthenticator()
    await register(svc, key)
    assert (await refused(sign_in(svc, key, user_handle=None))).reason is Reason.USER_HANDLE
    assert (await refused(sign_in(svc, key, user_handle=b"\x00" * 32))).reason is Reason.USER_HANDLE
    assert (await sign_in(svc, key)).user == "alice"


def test_claim_key_is_a_hash():
    from forwardauth.webauthn.challenges import Ceremony, issue

    c = issue(Ceremony.SIGN_IN, time.time(), "required")
    assert c.claim_key() == "webauthn-challenge:" + hashlib.sha256(c.value).hexdigest()
