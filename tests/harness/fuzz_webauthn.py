"""Fuzz targets for WebAuthn's messages (listed in harness/fuzz.py's `targets()`).

What a browser (or anyone) sends to the passkey routes, and what they keep:

- webauthn_registration / webauthn_assertion: a real answer of the software
  authenticator (tests/harness/softkey.py), mutated as a whole document, field
  by field as text, byte by byte behind the base64 (CBOR attestation object,
  authenticator data, signature), and its clientDataJSON mutated as JSON.
  The call is the part's own parsing and verification (webauthn.verify), whose
  only documented refusal is `Refused`.
- webauthn_challenge_cookie: the sealed challenge cookie mutated as text, and
  challenge documents mutated as JSON then sealed with the right key (so the
  reader behind the seal, Challenge.from_json, is reached): `ChallengeError`.
- webauthn_credential_record: a stored credential's JSON (Redis keeps them so)
  mutated: `ValueError` (core.jsonstrict's JsonError is one).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from fido2.utils import websafe_decode, websafe_encode
from hypothesis import strategies as st

from harness.fuzz import B64URL, JSON_VALUES, NOW, Target, mutated, text_or

ORIGIN = "https://auth.example.com"
SID = "sid-alice"
TIMEOUT = 120.0


@cache
def _settings() -> Any:
    from forwardauth.webauthn.settings import WebAuthnSettings

    return WebAuthnSettings(rp_id="example.com", origins=(ORIGIN,), level_user_verified="hardware",
                            level_presence="mfa")


@cache
def _sealer() -> Any:
    from forwardauth.core.keyring import Key, KeyRing
    from forwardauth.core.sealing import Sealer
    from forwardauth.webauthn.challenges import SEAL_PURPOSE

    return Sealer(KeyRing((Key("k1", bytes(range(32))),)), SEAL_PURPOSE)


@cache
def samples() -> dict[str, Any]:
    """A registration and an assertion of one software key, their challenges, the credential."""
    from forwardauth.webauthn import challenges as ch
    from forwardauth.webauthn.verify import verify_registration
    from harness.softkey import SoftAuthenticator

    settings, key = _settings(), SoftAuthenticator(aaguid=bytes(16))
    register = ch.issue(ch.Ceremony.REGISTER, NOW, "preferred", user="alice", sid=SID, user_handle=b"h" * 32)
    created = key.create(ch.creation_options(settings, register, "alice", "Alice", []), ORIGIN)
    credential = verify_registration(settings, register, created, "key", NOW)
    step_up = ch.issue(ch.Ceremony.STEP_UP, NOW, "preferred", user="alice", sid=SID, target="hardware")
    asserted = key.get(ch.request_options(settings, step_up, [credential]), ORIGIN)
    return {"register": register, "created": created, "credential": credential, "step_up": step_up,
            "asserted": asserted, "sealed": ch.seal(_sealer(), step_up), "challenge_json": step_up.to_json().decode()}


# --- strategies -------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return websafe_encode(raw)


def bytes_mutated(raw: bytes) -> st.SearchStrategy[bytes]:
    """`raw` with a few edits: bytes replaced, inserted or removed, a cut (CBOR and authenticator data)."""
    edit = st.tuples(st.integers(0, len(raw)), st.integers(0, 8), st.binary(max_size=8))

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        b = raw
        for i, cut, new in edits:
            i = min(i, len(b))
            b = b[:i] + new + b[i + cut:]
        return b

    return st.lists(edit, min_size=1, max_size=4).map(apply)


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    d["response"][field] = value
    return d


def _document(text: str) -> Any:
    """A mutated answer as the route would get it: its JSON value when it still parses, else the text."""
    from forwardauth.core import jsonstrict

    try:
        return jsonstrict.loads(text)
    except jsonstrict.JsonError:
        return text


def answers(base: dict[str, Any], binary: tuple[str, ...]) -> st.SearchStrategy[Any]:
    resp = base["response"]
    client_data = websafe_decode(resp["clientDataJSON"]).decode()
    fields = sorted(k for k, v in resp.items() if isinstance(v, str))
    return st.one_of(
        mutated(client_data).map(lambda t: _with(base, "clientDataJSON",
                                                 _b64(t.encode("utf-8", "surrogatepass")))),
        st.sampled_from(fields).flatmap(lambda f: text_or(resp[f], B64URL).map(lambda v: _with(base, f, v))),
        st.sampled_from(binary).flatmap(
            lambda f: bytes_mutated(websafe_decode(resp[f])).map(lambda b: _with(base, f, _b64(b)))),
        mutated(json.dumps(base)).map(_document),
        JSON_VALUES,
    )


def _seal_document(text: str) -> str:
    from forwardauth.core.sealing import SealError

    try:
        return _sealer().seal(text.encode("utf-8", "surrogatepass"))
    except SealError:  # longer than a cookie may be: what the route gets instead is any text
        return text


# --- the calls --------------------------------------------------------------------------------


def registration(data: Any) -> object:
    from forwardauth.state.records import WebAuthnCredential
    from forwardauth.webauthn.verify import verify_registration

    got = verify_registration(_settings(), samples()["register"], data, "key", NOW)
    assert isinstance(got, WebAuthnCredential) and got.user == "alice"
    return got


def assertion(data: Any) -> object:
    from forwardauth.webauthn.verify import parse_assertion, verify_assertion

    s = samples()
    return verify_assertion(_settings(), s["step_up"], parse_assertion(data), s["credential"], False)


def challenge_cookie(token: str) -> object:
    from forwardauth.webauthn.challenges import Ceremony, open_sealed

    got = open_sealed(_sealer(), token, Ceremony.STEP_UP, NOW + 1, TIMEOUT, sid=SID)
    assert got.ceremony is Ceremony.STEP_UP and got.sid == SID
    return got


def credential_record(text: str) -> object:
    from forwardauth.state.records import WebAuthnCredential

    return WebAuthnCredential.from_json(text)


def webauthn_targets() -> list[Target]:
    from forwardauth.webauthn.challenges import ChallengeError
    from forwardauth.webauthn.verify import Refused

    s = samples()
    return [
        Target("webauthn_registration", answers(s["created"], ("attestationObject",)), registration, (Refused,)),
        Target("webauthn_assertion", answers(s["asserted"], ("authenticatorData", "signature", "userHandle")),
               assertion, (Refused,)),
        Target("webauthn_challenge_cookie", st.one_of(text_or(s["sealed"], B64URL + ".~%"),
                                                      mutated(s["challenge_json"]).map(_seal_document)),
               challenge_cookie, (ChallengeError,)),
        Target("webauthn_credential_record", text_or(s["credential"].to_json()), credential_record, (ValueError,)),
    ]
