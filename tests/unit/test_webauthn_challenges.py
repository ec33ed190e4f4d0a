"""WebAuthn challenges: sealed, bound to a session, expiring, answered once; the counter rule."""

from __future__ import annotations

import asyncio
import time

import pytest

from forwardauth.core.config import parse_config
from forwardauth.core.keyring import Key, KeyRing
from forwardauth.core.sealing import Sealer
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import WebAuthnCredential, counter_advances
from forwardauth.state.records import webauthn_fingerprint as fingerprint
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import Ceremony, Challenge, ChallengeError, issue, open_sealed, seal
from forwardauth.webauthn.service import WebAuthnService
from forwardauth.webauthn.settings import WebAuthnSettings
from forwardauth.webauthn.verify import Reason, Refused
from harness.softkey import SoftAuthenticator

from .conftest import BASE

SEALER = Sealer(KeyRing((Key("k1", bytes(range(32))),)), challenges.SEAL_PURPOSE)
NOW = 1_700_000_000.0


def step_up_challenge(sid: str = "s1", now: float = NOW) -> Challenge:
    return issue(Ceremony.STEP_UP, now, "required", user="alice", sid=sid, target="hardware")


def test_sealed_challenge_round_trip():
    for c in (step_up_challenge(),
              issue(Ceremony.REGISTER, NOW, "preferred", user="alice", sid="s1", user_handle=b"h" * 32),
              issue(Ceremony.SIGN_IN, NOW, "required")):
        token = seal(SEALER, c)
        assert c.value.hex() not in token and "alice" not in token
        assert open_sealed(SEALER, token, c.ceremony, NOW + 5, 120, sid=c.sid) == c


@pytest.mark.parametrize("change, message", [
    (lambda t: (t, Ceremony.REGISTER, NOW, "s1"), "a step-up challenge answered as register"),
    (lambda t: (t, Ceremony.STEP_UP, NOW + 121, "s1"), "challenge expired"),
    (lambda t: (t, Ceremony.STEP_UP, NOW - 61, "s1"), "challenge expired"),
    (lambda t: (t, Ceremony.STEP_UP, NOW, "s2"), "challenge of another session"),
    (lambda t: (t, Ceremony.STEP_UP, NOW, None), "challenge of another session"),
    (lambda t: (t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:], Ceremony.STEP_UP, NOW, "s1"),
     "no valid challenge (start again)"),
    (lambda t: ("", Ceremony.STEP_UP, NOW, "s1"), "no valid challenge (start again)"),
    (lambda t: (Sealer(SEALER.ring, "other").seal(step_up_challenge().to_json()), Ceremony.STEP_UP, NOW, "s1"),
     "no valid challenge (start again)"),
])
def test_sealed_challenge_refusals(change, message):
    token, ceremony, now, sid = change(seal(SEALER, step_up_challenge()))
    with pytest.raises(ChallengeError) as info:
        open_sealed(SEALER, token, ceremony, now, 120, sid=sid)
    assert str(info.value) == message


@pytest.mark.parametrize("raw", [
    b"{}", b"[]", b'{"c":"step-up","v":"AA","t":1,"uv":"required"}',
    b'{"c":"step-up","v":"' + b"A" * 43 + b'","t":true,"uv":"required"}',
    b'{"c":"step-up","v":"' + b"A" * 43 + b'","t":1,"uv":"sometimes"}',
    b'{"c":"dance","v":"' + b"A" * 43 + b'","t":1,"uv":"required"}',
    b'{"c":"step-up","v":"' + b"A" * 43 + b'","t":1,"uv":"required","u":5}',
    b'{"c":"step-up","v":"' + b"A" * 43 + b'","t":1,"uv":"required","extra":1}',
])
def test_challenge_json_is_strict(raw):
    with pytest.raises((ValueError, KeyError)):
        Challenge.from_json(raw)


def test_challenge_json_is_read_strictly():
    good = b'{"c":"step-up","v":"' + b"A" * 43 + b'","t":1,"uv":"required"'
    assert Challenge.from_json(good + b"}").issued == 1.0
    for raw, message in ((good + b',"uv":"discouraged"}', "a key appears twice in one object"),
                         (good.replace(b'"t":1', b'"t":NaN') + b"}", "NaN is not a JSON number"),
                         (good + b',"u":["x"]}', "nested deeper than 1 levels")):
        with pytest.raises(ValueError) as err:
            Challenge.from_json(raw)
        assert str(err.value) == message


def test_credential_records_are_read_strictly():
    cred = WebAuthnCredential(id=b"\x01" * 16, user="alice", user_handle=b"h" * 32, public_key=b"k", sign_count=3,
                              name="key", created=NOW)
    text = cred.to_json()
    assert WebAuthnCredential.from_json(text) == cred
    for bad, message in ((text.replace('"sign_count":3', '"sign_count":1e999'), "bad credential record: sign_count"),
                         (text.replace('"sign_count":3', '"sign_count":2.5'), "bad credential record: sign_count"),
                         (text.replace('"sign_count":3', '"sign_count":true'), "bad credential record: sign_count"),
                         (text[:-1] + ',"name":"other"}', "a key appears twice in one object")):
        with pytest.raises(ValueError) as err:
            WebAuthnCredential.from_json(bad)
        assert str(err.value) == message


def test_issue_needs_user_and_session():
    with pytest.raises(ValueError):
        issue(Ceremony.STEP_UP, NOW, "required", user="alice")
    with pytest.raises(ValueError):
        issue(Ceremony.REGISTER, NOW, "required", user="alice", sid="s1")
    assert issue(Ceremony.SIGN_IN, NOW, "required").value != issue(Ceremony.SIGN_IN, NOW, "required").value


async def test_concurrent_answers_to_one_challenge_pass_once():
    levels = parse_config(BASE + "policy: {rules: []}\n", "test.yaml").levels
    settings = WebAuthnSettings("example.com", ("https://auth.example.com",), "hardware")
    svc = WebAuthnService(settings, levels, MemoryStore())
    key = SoftAuthenticator(zero_counter=True)
    c, options = await svc.start_registration("alice", "s1", "alice", "Alice", time.time())
    await svc.finish_registration(c, key.create(options, "https://auth.example.com"), "k", time.time())
    c, options = await svc.start_step_up("alice", "s1", "hardware", time.time())
    answer = key.get(options, "https://auth.example.com")
    results = await asyncio.gather(*(svc.finish_assertion(c, answer, time.time()) for _ in range(5)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert {r.reason for r in results if isinstance(r, Refused)} == {Reason.CHALLENGE_USED}


# -- the counter rule (every backend applies this function; tests/integration/test_webauthn_store.py) --


@pytest.mark.parametrize("stored, new, ok", [(0, 0, True), (0, 1, True), (1, 2, True), (5, 5, False), (5, 4, False),
                                             (5, 0, False), (0, 2**32 - 1, True)])
def test_counter_rule(stored, new, ok):
    assert counter_advances(stored, new) is ok


def test_fingerprint_is_short_and_not_the_id():
    cid = bytes(range(32))
    assert len(fingerprint(cid)) == 16 and fingerprint(cid) != fingerprint(cid[:-1])
    assert cid.hex()[:16] not in fingerprint(cid)
    assert WebAuthnCredential(cid, "alice", b"h", b"k", 0, "key", NOW).key == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
