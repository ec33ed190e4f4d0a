"""Pairing codes and device credentials: made here, only their hashes stored.

Pairing code: 16 characters from a 32-letter alphabet without look-alikes
(80 bits), shown as ABCD-EFGH-JKLM-NPQR on the devices page and inside the
QR code's URL (in the fragment, so it never reaches a proxy's access log).
The store keeps its SHA-256 only; exchanging it is single use on every
replica through the store's `claim_once` on that hash, and it lives
`pairing_ttl`. 80 random bits cannot be guessed within minutes through a
rate-limited endpoint.

Device credential: a random bearer token `fad1_<device id>.<secret>` (the
secret is 32 random bytes), shown once to the device and stored as the
SHA-256 of the secret. Chosen over a key pair because:
  - the phone page runs in a browser: a key pair there means WebCrypto plus
    IndexedDB plus a signed challenge per poll (a nonce round trip, or a
    signed timestamp and a replay window), for the same protection TLS
    already gives a bearer token in transit;
  - the server-side risk a key pair removes, a stolen store copy, is
    removed by storing only a hash: 256 random bits need no slow hash
    (nothing to brute-force), and a copy of the store cannot authenticate;
  - a bearer token works through every proxy and with curl.
The device id in the token lets the server find the record without
comparing against every hash; the secret is then checked with
`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1
CODE_LENGTH = 16
_CODE_RE = re.compile(rf"^[{CODE_ALPHABET}]{{{CODE_LENGTH}}}$")
CREDENTIAL_PREFIX = "fad1_"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")
_CREDENTIAL_RE = re.compile(r"^fad1_([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$")
_BEARER_RE = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(fad1_[A-Za-z0-9_.-]{1,200})\s*$")


def new_pairing_code() -> str:
    """A fresh code, without separators (see `format_code`)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    """ABCD-EFGH-JKLM-NPQR: easier to read out and type."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def normalise_code(text: str) -> str | None:
    """What a person or a scanner gives back, as the code; None when it
    cannot be one. Case, spaces and dashes do not matter; the look-alikes
    a person may type (O for 0 is not in the alphabet, but 0 and 1 are not
    either) are not guessed at: a wrong code is a wrong code."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    code = re.sub(r"[\s-]", "", text).upper()
    return code if _CODE_RE.match(code) else None


def code_hash(code: str) -> str:
    """The key a pairing is stored and claimed under (never the code itself)."""
    return hashlib.sha256(b"forwardauth-device-pairing:" + code.encode()).hexdigest()


def new_device_id() -> str:
    return secrets.token_urlsafe(12)  # 16 characters


def valid_device_id(text: str) -> bool:
    return isinstance(text, str) and bool(_ID_RE.match(text))


@dataclass(frozen=True)
class NewCredential:
    device_id: str
    token: str  # shown to the device once, never stored
    secret_hash: str  # stored


def new_credential(device_id: str | None = None) -> NewCredential:
    device_id = device_id or new_device_id()
    secret = secrets.token_urlsafe(32)  # 43 characters
    return NewCredential(device_id, f"{CREDENTIAL_PREFIX}{device_id}.{secret}", _hash(secret))


def _hash(secret: str) -> str:
    return hashlib.sha256(b"forwardauth-device-credential:" + secret.encode()).hexdigest()


@dataclass(frozen=True)
class Presented:
    """A credential as a device sent it: which device, and the secret to check."""

    device_id: str
    secret: str

    def matches(self, secret_hash: str) -> bool:
        """Constant time in the secret: the comparison does not stop at the
        first differing character."""
        return hmac.compare_digest(_hash(self.secret), secret_hash)


def parse_credential(token: str) -> Presented | None:
    m = _CREDENTIAL_RE.match(token) if isinstance(token, str) else None
    return Presented(m.group(1), m.group(2)) if m else None


def from_authorization(header: str | None) -> Presented | None:
    """The device credential in `Authorization: Bearer fad1_...`, or None."""
    if not header or len(header) > 300:
        return None
    m = _BEARER_RE.match(header)
    return parse_credential(m.group(1)) if m else None
