"""Challenges: issued by one replica, answered once, on any replica, in time.

A challenge is 32 random bytes plus what it was issued for (ceremony, user,
the session that asked, the level a step-up aims at). The web layer keeps it
sealed with the key ring (so any replica can open it, nobody can forge or
read it) in a short-lived cookie of the browser that asked; answering it
claims its hash in the shared state store (`claim_once`), so it is used at
most once, whichever replica gets the answer. The options sent to the
browser are built with fido2's data classes, in the JSON shape of
`PublicKeyCredential.parseCreationOptionsFromJSON`/`parseRequestOptionsFromJSON`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fido2.cose import ES256, RS256, EdDSA
from fido2.webauthn import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRequestOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from forwardauth.core import jsonstrict
from forwardauth.core.keyring import b64d, b64e
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.state.records import WebAuthnCredential as Credential
from forwardauth.webauthn.settings import WebAuthnSettings

CHALLENGE_BYTES = 32
USER_HANDLE_BYTES = 32
CLAIM_MARGIN = 60.0  # the claim outlives the challenge by this much (clock skew between replicas)
# Key algorithms offered, preferred first: ES256 (nearly every authenticator),
# EdDSA (some security keys), RS256 (Windows Hello). All verified by fido2.
ALGORITHMS = (ES256.ALGORITHM, EdDSA.ALGORITHM, RS256.ALGORITHM)
SEAL_PURPOSE = "webauthn-challenge"


class Ceremony(enum.Enum):
    REGISTER = "register"  # add a credential to a signed-in user
    STEP_UP = "step-up"  # raise a signed-in session's level
    SIGN_IN = "sign-in"  # passwordless: a discoverable credential names the user


@dataclass(frozen=True)
class Challenge:
    ceremony: Ceremony
    value: bytes
    issued: float
    user_verification: str  # what the authenticator was asked: required, preferred or discouraged
    user: str | None = None  # REGISTER and STEP_UP: the session's user
    sid: str | None = None  # REGISTER and STEP_UP: the session it is bound to
    user_handle: bytes | None = None  # REGISTER: the user.id given to the authenticator
    target: str | None = None  # STEP_UP: the level the route needs

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"c": self.ceremony.value, "v": b64e(self.value), "t": self.issued,
                             "uv": self.user_verification}
        for key, value in (("u", self.user), ("s", self.sid), ("lv", self.target)):
            if value is not None:
                d[key] = value
        if self.user_handle is not None:
            d["h"] = b64e(self.user_handle)
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Challenge:
        """Strict: anything unexpected raises ValueError (core.jsonstrict's JsonError is one)."""
        d = jsonstrict.loads(raw, max_depth=1)
        if not isinstance(d, dict) or not set(d) <= {"c", "v", "t", "uv", "u", "s", "lv", "h"}:
            raise ValueError("unexpected fields")
        issued = d["t"]
        if isinstance(issued, bool) or not isinstance(issued, (int, float)):
            raise ValueError("bad time")
        for key in ("u", "s", "lv", "h", "v", "uv"):
            if key in d and not isinstance(d[key], str):
                raise ValueError(f"bad {key}")
        value = b64d(d["v"])
        if len(value) != CHALLENGE_BYTES or d["uv"] not in ("required", "preferred", "discouraged"):
            raise ValueError("bad challenge")
        return cls(Ceremony(d["c"]), value, float(issued), d["uv"], d.get("u"), d.get("s"),
                   b64d(d["h"]) if "h" in d else None, d.get("lv"))

    def claim_key(self) -> str:
        """What the state store keeps to make this challenge single-use: a hash, never the value."""
        return "webauthn-challenge:" + hashlib.sha256(self.value).hexdigest()


class ChallengeError(Exception):
    """Why a sealed challenge cannot be answered (for the audit; the message names no value)."""


def issue(ceremony: Ceremony, now: float, user_verification: str, *, user: str | None = None,
          sid: str | None = None, user_handle: bytes | None = None, target: str | None = None) -> Challenge:
    if ceremony is not Ceremony.SIGN_IN and (user is None or sid is None):
        raise ValueError("a registration or step-up challenge is bound to a user and a session")
    if ceremony is Ceremony.REGISTER and user_handle is None:
        raise ValueError("a registration challenge carries the user handle")
    return Challenge(ceremony, os.urandom(CHALLENGE_BYTES), now, user_verification, user, sid, user_handle, target)


def new_user_handle() -> bytes:
    """A user's WebAuthn user.id: random, so the authenticator learns nothing about the account."""
    return os.urandom(USER_HANDLE_BYTES)


def seal(sealer: Sealer, challenge: Challenge) -> str:
    return sealer.seal(challenge.to_json())


def open_sealed(sealer: Sealer, token: str, ceremony: Ceremony, now: float, timeout: float,
                sid: str | None = None) -> Challenge:
    """The challenge of `token`, checked: the right ceremony, not expired, the same session."""
    try:
        challenge = Challenge.from_json(sealer.open(token))
    except (SealError, ValueError, KeyError, TypeError):
        raise ChallengeError("no valid challenge (start again)") from None
    if challenge.ceremony is not ceremony:
        raise ChallengeError(f"a {challenge.ceremony.value} challenge answered as {ceremony.value}")
    if not challenge.issued - CLAIM_MARGIN <= now <= challenge.issued + timeout:
        raise ChallengeError("challenge expired")
    if ceremony is not Ceremony.SIGN_IN and not hmac.compare_digest((challenge.sid or "").encode(),
                                                                      (sid or "").encode()):
        raise ChallengeError("challenge of another session")
    return challenge


def _descriptors(credentials: Sequence[Credential]) -> list[PublicKeyCredentialDescriptor]:
    out = []
    for c in credentials:
        # fido2 maps a transport it does not know (smart-card) to None: leave those out.
        transports = [t for t in (AuthenticatorTransport(name) for name in c.transports) if t is not None]
        out.append(PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY, id=c.id,
                                                 transports=transports or None))
    return out


def creation_options(settings: WebAuthnSettings, challenge: Challenge, user_name: str, display_name: str,
                     existing: Sequence[Credential]) -> dict[str, Any]:
    """What navigator.credentials.create() gets (JSON). `existing` are excluded, so one
    authenticator is not registered twice for the same user."""
    if challenge.ceremony is not Ceremony.REGISTER or challenge.user_handle is None:
        raise ValueError("not a registration challenge")
    options = PublicKeyCredentialCreationOptions(
        rp=PublicKeyCredentialRpEntity(name=settings.rp_name, id=settings.rp_id),
        user=PublicKeyCredentialUserEntity(id=challenge.user_handle, name=user_name, display_name=display_name),
        challenge=challenge.value,
        pub_key_cred_params=[PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=a)
                             for a in ALGORITHMS],
        timeout=int(settings.timeout * 1000),
        exclude_credentials=_descriptors(existing) or None,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement(settings.resident_keys),
            user_verification=UserVerificationRequirement(challenge.user_verification)),
        attestation=AttestationConveyancePreference(settings.attestation),
        extensions={"credProps": True},
    )
    return json.loads(json.dumps(dict(options)))


def request_options(settings: WebAuthnSettings, challenge: Challenge,
                    allowed: Sequence[Credential] | None) -> dict[str, Any]:
    """What navigator.credentials.get() gets (JSON). `allowed` None: any discoverable
    credential of this RP (passwordless sign-in, conditional UI)."""
    options = PublicKeyCredentialRequestOptions(
        challenge=challenge.value,
        timeout=int(settings.timeout * 1000),
        rp_id=settings.rp_id,
        allow_credentials=_descriptors(allowed) if allowed is not None else None,
        user_verification=UserVerificationRequirement(challenge.user_verification),
    )
    return json.loads(json.dumps(dict(options)))
