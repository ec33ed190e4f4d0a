"""A software WebAuthn authenticator for tests: generated vectors, never copied ones.

It answers the options forwardauth sends the browser with what a browser
would post back (the JSON of `PublicKeyCredential.toJSON()`), signing with
keys from `cryptography` and encoding with fido2's own builders
(AuthenticatorData.create, AttestationObject.create, fido2.cbor): no CBOR
written by hand. Every field a verification rule looks at can be bent per
call (origin, RP ID, challenge, flags, counter, signature, user handle), so
each rule gets its own failing answer.

    key = SoftAuthenticator(user_verification=True)
    answer = key.create(options, "https://auth.example.com")
    answer = key.get(options, "https://auth.example.com", counter=0)
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from fido2.cose import ES256, EdDSA
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    Aaguid,
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
)

FLAG = AuthenticatorData.FLAG


@dataclass
class SoftCredential:
    id: bytes
    rp_id: str
    user_handle: bytes
    key: Any  # a cryptography private key
    counter: int = 0


@dataclass
class Attestation:
    """A packed attestation with a certificate chain: leaf (with its AAGUID) <- root."""

    root_pem: bytes
    leaf_der: bytes
    leaf_key: ec.EllipticCurvePrivateKey


def make_attestation(aaguid: bytes, *, org: str = "Test Keys Inc") -> Attestation:
    """A fresh root CA and an attestation certificate as the packed format requires."""
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} Root CA")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{org} attestation"),
    ])
    # id-fido-gen-ce-aaguid: an OCTET STRING holding the 16 bytes (DER: 04 10 ...).
    aaguid_ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4"), b"\x04\x10" + aaguid)
    leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(root_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(aaguid_ext, critical=False)
            .sign(root_key, hashes.SHA256()))
    return Attestation(root.public_bytes(serialization.Encoding.PEM), leaf.public_bytes(serialization.Encoding.DER),
                       leaf_key)


def _sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _cose(key: Any) -> Any:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return EdDSA.from_cryptography_key(key.public_key())
    return ES256.from_cryptography_key(key.public_key())


class RawClientData(bytes):
    """Client data bytes signed as they are (even ones fido2 cannot parse): for refusals."""

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self).digest()


@dataclass
class SoftAuthenticator:
    aaguid: bytes = field(default_factory=lambda: os.urandom(16))
    user_verification: bool = True  # can verify its user (PIN/biometric); sets UV when asked
    zero_counter: bool = False  # like most passkeys: the counter stays 0
    backup_eligible: bool = False
    backed_up: bool = False
    algorithm: str = "ES256"  # or "EdDSA"
    attestation: Attestation | None = None  # None: "none" attestation (or self with self_attest)
    self_attest: bool = False
    transports: tuple[str, ...] = ("internal",)
    credentials: list[SoftCredential] = field(default_factory=list)

    def _flags(self, *, attested: bool, up: bool, uv: bool | None, asked: str | None) -> FLAG:
        flags = FLAG(0)
        if up:
            flags |= FLAG.UP
        if uv if uv is not None else (self.user_verification and asked != "discouraged"):
            flags |= FLAG.UV
        if self.backup_eligible:
            flags |= FLAG.BE
        if self.backed_up:
            flags |= FLAG.BS
        if attested:
            flags |= FLAG.AT
        return flags

    def create(self, options: dict[str, Any], origin: str, *, rp_id: str | None = None,
               challenge: bytes | None = None, up: bool = True, uv: bool | None = None,
               ceremony: str = "webauthn.create", cross_origin: bool = False,
               client_data_json: bytes | None = None) -> dict[str, Any]:
        """Answer creation options as navigator.credentials.create() would (JSON).
        `client_data_json`: sign these bytes as the client data instead of a browser's."""
        rp = rp_id or options["rp"]["id"]
        asked = (options.get("authenticatorSelection") or {}).get("userVerification")
        key = ed25519.Ed25519PrivateKey.generate() if self.algorithm == "EdDSA" else \
            ec.generate_private_key(ec.SECP256R1())
        cred = SoftCredential(os.urandom(32), rp, websafe_decode(options["user"]["id"]), key)
        counter = 0 if self.zero_counter else 1
        cred.counter = counter
        client_data = CollectedClientData.create(ceremony, challenge or websafe_decode(options["challenge"]), origin,
                                                 cross_origin)
        if client_data_json is not None:
            client_data = RawClientData(client_data_json)
        auth_data = AuthenticatorData.create(
            hashlib.sha256(rp.encode()).digest(), self._flags(attested=True, up=up, uv=uv, asked=asked), counter,
            AttestedCredentialData.create(Aaguid(self.aaguid), cred.id, _cose(key)))
        if self.attestation is not None:
            a = self.attestation
            stmt = {"alg": ES256.ALGORITHM, "sig": _sign(a.leaf_key, auth_data + client_data.hash), "x5c": [a.leaf_der]}
            att = AttestationObject.create("packed", auth_data, stmt)
        elif self.self_attest:
            stmt = {"alg": _cose(key).ALGORITHM, "sig": _sign(key, auth_data + client_data.hash)}
            att = AttestationObject.create("packed", auth_data, stmt)
        else:
            att = AttestationObject.create("none", auth_data, {})
        self.credentials.append(cred)
        return {
            "id": websafe_encode(cred.id), "rawId": websafe_encode(cred.id), "type": "public-key",
            "response": {"clientDataJSON": websafe_encode(client_data), "attestationObject": websafe_encode(att),
                         "transports": list(self.transports)},
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {"credProps": {"rk": True}},
        }

    def get(self, options: dict[str, Any], origin: str, *, credential: SoftCredential | None = None,
            rp_id: str | None = None, challenge: bytes | None = None, up: bool = True, uv: bool | None = None,
            counter: int | None = None, user_handle: bytes | None | bool = True, bad_signature: bool = False,
            ceremony: str = "webauthn.get", cross_origin: bool = False,
            client_data_json: bytes | None = None) -> dict[str, Any]:
        """Answer request options as navigator.credentials.get() would (JSON).

        `credential`: which one signs (default: the first allowed, else the
        first held for the RP). `counter`: send this counter instead of the
        next one. `user_handle`: True sends the credential's, None sends none,
        bytes send those. `client_data_json`: sign these bytes as the client data.
        """
        rp = options.get("rpId")
        if credential is None:
            allowed = {websafe_decode(c["id"]) for c in options.get("allowCredentials") or []}
            held = [c for c in self.credentials if c.rp_id == rp and (not allowed or c.id in allowed)]
            if not held:
                raise LookupError("no credential for these options")
            credential = held[0]
        if counter is None:
            counter = 0 if self.zero_counter else credential.counter + 1
        credential.counter = max(credential.counter, counter)
        client_data = CollectedClientData.create(ceremony, challenge or websafe_decode(options["challenge"]), origin,
                                                 cross_origin)
        if client_data_json is not None:
            client_data = RawClientData(client_data_json)
        auth_data = AuthenticatorData.create(
            hashlib.sha256((rp_id or credential.rp_id).encode()).digest(),
            self._flags(attested=False, up=up, uv=uv, asked=options.get("userVerification")), counter)
        signature = _sign(credential.key, auth_data + client_data.hash)
        if bad_signature:
            signature = _sign(credential.key, auth_data + client_data.hash + b"!")
        handle = credential.user_handle if user_handle is True else user_handle
        response: dict[str, Any] = {"clientDataJSON": websafe_encode(client_data),
                                    "authenticatorData": websafe_encode(auth_data),
                                    "signature": websafe_encode(signature)}
        if isinstance(handle, bytes):
            response["userHandle"] = websafe_encode(handle)
        return {"id": websafe_encode(credential.id), "rawId": websafe_encode(credential.id), "type": "public-key",
                "response": response, "authenticatorAttachment": "cross-platform", "clientExtensionResults": {}}
