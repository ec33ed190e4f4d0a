"""Verification of what the browser sends back, on top of Yubico's fido2.

Each rule is checked here in WebAuthn's order with its own typed reason
(what the audit log and the regulation see): ceremony type, challenge,
origin, RP ID hash, user present, user verified when the level needs it,
then the signature or the attestation. fido2 parses everything (CBOR, COSE,
attestation statements) and then verifies the whole ceremony again as the
final authority (`Fido2Server.register_complete`/`authenticate_complete`):
our checks give the reasons, the library has the last word, and what it
refuses after ours passed can only be the signature. Counters, the owner of
a credential and locking are the service's (they need the store).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from fido2 import cbor
from fido2.attestation.base import (
    AttestationResult,
    AttestationVerifier,
    InvalidAttestation,
)
from fido2.cose import CoseKey
from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    Aaguid,
    AttestationConveyancePreference,
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorData,
    CollectedClientData,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    RegistrationResponse,
    UserVerificationRequirement,
)

from forwardauth.core import jsonstrict
from forwardauth.state.records import WEBAUTHN_TRANSPORTS as TRANSPORTS
from forwardauth.state.records import WebAuthnCredential as Credential
from forwardauth.state.records import WebAuthnError, check_credential_name
from forwardauth.webauthn.challenges import ALGORITHMS, Challenge
from forwardauth.webauthn.settings import WebAuthnSettings


class Reason(enum.Enum):
    """Why a WebAuthn answer was refused (audit `reason`; never key material)."""

    MALFORMED = "malformed response"
    CHALLENGE_INVALID = "no valid challenge"
    CHALLENGE_USED = "challenge already used"
    WRONG_CEREMONY = "wrong ceremony type"
    CHALLENGE = "challenge mismatch"
    ORIGIN = "origin not allowed"
    RP_ID = "RP ID hash mismatch"
    NOT_PRESENT = "user presence flag not set"
    NOT_VERIFIED = "user verification needed for this level"
    ALGORITHM = "key algorithm not allowed"
    ATTESTATION = "attestation not trusted"
    AAGUID = "authenticator model not allowed"
    UNKNOWN_CREDENTIAL = "unknown credential"
    OTHER_USER = "credential of another user"
    USER_HANDLE = "user handle does not match the credential"
    LOCKED = "credential locked"
    BACKUP_ELIGIBILITY = "backup eligibility changed"
    SIGNATURE = "bad signature"
    COUNTER = "signature counter did not increase (possible cloned authenticator)"
    NO_LEVEL = "this proof gives no level"
    DUPLICATE = "credential already registered"
    TOO_MANY = "too many credentials"
    NAME = "invalid credential name"


class Refused(Exception):
    def __init__(self, reason: Reason, detail: str = "", credential: Credential | None = None):
        self.reason = reason
        self.detail = detail  # more for the audit (an origin, a level); never a challenge or a key
        self.credential = credential
        super().__init__(reason.value + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Assertion:
    """A verified assertion, before its counter is recorded."""

    credential_id: bytes
    sign_count: int
    user_verified: bool
    backup_eligible: bool
    backed_up: bool


class RootsVerifier(AttestationVerifier):
    """Attestation must chain to one of the configured roots; self attestation never does."""

    def __init__(self, roots: Sequence[bytes]):
        super().__init__()
        self._roots = [(x509.load_der_x509_certificate(der), der) for der in roots]

    def ca_lookup(self, attestation_result: AttestationResult, auth_data: AuthenticatorData) -> bytes | None:
        if not attestation_result.trust_path:
            return None  # self or no attestation: the AAGUID is only the authenticator's word
        last = x509.load_der_x509_certificate(attestation_result.trust_path[-1])
        for root, der in self._roots:
            if root.subject == last.issuer:
                return der
        return None


CLIENT_DATA_DEPTH = 4  # browsers send a flat object (tokenBinding, when present, nests one level)


def strict_client_data(client_data: bytes) -> dict[str, Any]:
    """clientDataJSON read strictly (core.jsonstrict), or Refused(MALFORMED).

    fido2 reads it with json.loads, where the last of two equal keys wins: without
    this, `{"origin": "https://evil.example", ..., "origin": "https://ours"}` would be
    read as ours here and as evil.example by a reader that keeps the first."""
    try:
        value = jsonstrict.loads(client_data, CLIENT_DATA_DEPTH)
    except jsonstrict.JsonError as exc:
        raise Refused(Reason.MALFORMED, f"client data: {exc}") from None
    if not isinstance(value, dict):
        raise Refused(Reason.MALFORMED, "client data: not an object")
    return value


def _client_data_first(data: Any) -> None:
    """The strict reading before fido2's, so that what it refuses is named (fido2's own
    failure on a document that is no object, or not UTF-8, says nothing)."""
    if not isinstance(data, Mapping):  # fido2's from_dict(None) is None, not an error
        raise Refused(Reason.MALFORMED, "not an object")
    response = data.get("response")
    raw = response.get("clientDataJSON") if isinstance(response, Mapping) else None
    if isinstance(raw, str):
        try:
            decoded = websafe_decode(raw)
        except ValueError:
            raise Refused(Reason.MALFORMED, "client data: not base64url") from None
        strict_client_data(decoded)


def parse_registration(data: Any) -> RegistrationResponse:
    _client_data_first(data)
    try:
        response = RegistrationResponse.from_dict(data)  # parses the attestation object too
    except Exception:  # noqa: BLE001 - fido2 raises many kinds on garbage; all mean "malformed"
        raise Refused(Reason.MALFORMED) from None
    if response.type != PublicKeyCredentialType.PUBLIC_KEY:
        raise Refused(Reason.MALFORMED, "not a public-key credential")
    strict_client_data(bytes(response.response.client_data))  # what fido2 read, whatever form it came in
    return response


def parse_assertion(data: Any) -> AuthenticationResponse:
    _client_data_first(data)
    try:
        response = AuthenticationResponse.from_dict(data)
    except Exception:  # noqa: BLE001 - as above
        raise Refused(Reason.MALFORMED) from None
    if response.type != PublicKeyCredentialType.PUBLIC_KEY:
        raise Refused(Reason.MALFORMED, "not a public-key credential")
    strict_client_data(bytes(response.response.client_data))  # what fido2 read, whatever form it came in
    return response


def _server(settings: WebAuthnSettings) -> Fido2Server:
    origins = frozenset(settings.origins)
    verifier = RootsVerifier(settings.attestation_roots) if settings.attestation == "direct" else None
    return Fido2Server(PublicKeyCredentialRpEntity(name=settings.rp_name, id=settings.rp_id),
                       attestation=AttestationConveyancePreference(settings.attestation),
                       verify_origin=origins.__contains__,
                       verify_attestation=verifier)


def _state(challenge: Challenge, need_uv: bool) -> dict[str, Any]:
    uv = UserVerificationRequirement.REQUIRED if need_uv else UserVerificationRequirement.PREFERRED
    return {"challenge": websafe_encode(challenge.value), "user_verification": uv}


def _common(settings: WebAuthnSettings, client_data: CollectedClientData, kind: str, challenge: Challenge,
            auth_data: AuthenticatorData, need_uv: bool) -> None:
    """The checks both ceremonies share, in the specification's order."""
    if client_data.type != kind:
        raise Refused(Reason.WRONG_CEREMONY, f"{str(client_data.type)[:32]!r} instead of {kind!r}")
    if not hmac.compare_digest(client_data.challenge, challenge.value):
        raise Refused(Reason.CHALLENGE)
    if not isinstance(client_data.origin, str) or client_data.origin not in settings.origins:
        raise Refused(Reason.ORIGIN, repr(str(client_data.origin)[:100]))
    if client_data.cross_origin is not False:
        raise Refused(Reason.ORIGIN, "cross-origin (in a frame of another site)")
    expected = hashlib.sha256(settings.rp_id.encode()).digest()
    if not hmac.compare_digest(auth_data.rp_id_hash, expected):
        raise Refused(Reason.RP_ID)
    if not auth_data.is_user_present():
        raise Refused(Reason.NOT_PRESENT)
    if need_uv and not auth_data.is_user_verified():
        raise Refused(Reason.NOT_VERIFIED)


def _transports(data: Mapping[str, Any]) -> tuple[str, ...]:
    raw = data.get("response", {}).get("transports") if isinstance(data.get("response"), Mapping) else None
    if not isinstance(raw, list):
        return ()
    return tuple(dict.fromkeys(t for t in raw if isinstance(t, str) and t in TRANSPORTS))


def _discoverable(data: Mapping[str, Any]) -> bool | None:
    ext = data.get("clientExtensionResults")
    props = ext.get("credProps") if isinstance(ext, Mapping) else None
    rk = props.get("rk") if isinstance(props, Mapping) else None
    return rk if isinstance(rk, bool) else None


def verify_registration(settings: WebAuthnSettings, challenge: Challenge, data: Mapping[str, Any], name: str,
                        now: float) -> Credential:
    """A new credential for the challenge's user, or Refused with the reason."""
    if challenge.user is None or challenge.user_handle is None:
        raise Refused(Reason.CHALLENGE_INVALID, "not a registration challenge")
    try:
        name = check_credential_name(name)
    except WebAuthnError as exc:
        raise Refused(Reason.NAME, str(exc)) from None
    response = parse_registration(data)
    att = response.response.attestation_object
    auth_data = att.auth_data
    need_uv = challenge.user_verification == "required"
    _common(settings, response.response.client_data, CollectedClientData.TYPE.CREATE, challenge, auth_data, need_uv)
    cred_data = auth_data.credential_data
    if cred_data is None or not auth_data.is_attested():
        raise Refused(Reason.MALFORMED, "no attested credential data")
    if cred_data.credential_id != response.raw_id:
        raise Refused(Reason.MALFORMED, "credential id differs from the attested one")
    if cred_data.public_key.ALGORITHM not in ALGORITHMS:
        raise Refused(Reason.ALGORITHM, str(cred_data.public_key.ALGORITHM))
    aaguid = str(cred_data.aaguid)
    if settings.attestation == "direct":
        try:
            RootsVerifier(settings.attestation_roots).verify_attestation(att, response.response.client_data.hash)
        except (InvalidAttestation, ValueError) as exc:
            raise Refused(Reason.ATTESTATION, f"{att.fmt}: {type(exc).__name__}") from None
        if aaguid not in settings.aaguids:
            raise Refused(Reason.AAGUID, aaguid)
    try:
        _server(settings).register_complete(_state(challenge, need_uv), response)
    except Exception as exc:  # noqa: BLE001 - the library's last word; our checks passed
        raise Refused(Reason.ATTESTATION if settings.attestation == "direct" else Reason.MALFORMED,
                      f"fido2: {exc}"[:200]) from None
    return Credential(
        id=cred_data.credential_id, user=challenge.user, user_handle=challenge.user_handle,
        public_key=cbor.encode(dict(cred_data.public_key)), sign_count=auth_data.counter, name=name, created=now,
        transports=_transports(data), aaguid=aaguid, backup_eligible=auth_data.is_backup_eligible(),
        backed_up=auth_data.is_backed_up(), user_verifying=auth_data.is_user_verified(),
        discoverable=_discoverable(data))


def verify_assertion(settings: WebAuthnSettings, challenge: Challenge, response: AuthenticationResponse,
                     credential: Credential, need_uv: bool) -> Assertion:
    """Everything about one assertion that needs no store: flags, origin, signature.

    The caller has found `credential` by the response's id and checked its owner.
    """
    auth_data = response.response.authenticator_data
    _common(settings, response.response.client_data, CollectedClientData.TYPE.GET, challenge, auth_data, need_uv)
    if auth_data.is_backup_eligible() != credential.backup_eligible:
        raise Refused(Reason.BACKUP_ELIGIBILITY, credential=credential)
    try:
        cose = cbor.decode(credential.public_key)
        if not isinstance(cose, Mapping):
            raise ValueError("stored key is not a COSE map")
        stored = AttestedCredentialData.create(Aaguid.parse(credential.aaguid), credential.id, CoseKey.parse(cose))
        _server(settings).authenticate_complete(_state(challenge, need_uv), [stored], response)
    except Exception:  # noqa: BLE001 - every earlier rule passed: what is left is the signature
        raise Refused(Reason.SIGNATURE, credential=credential) from None
    return Assertion(credential.id, auth_data.counter, auth_data.is_user_verified(),
                     auth_data.is_backup_eligible(), auth_data.is_backed_up())
