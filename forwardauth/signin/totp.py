"""TOTP second factor (RFC 6238 via pyotp): 6 digits, 30 s steps, one step of skew.

Compatible with Google Authenticator, Authy, FreeOTP, 1Password and the like
(SHA-1, the only algorithm they all read from an otpauth URI).

A code is accepted for the step before, the current and the step after, and
only once: the step it matched is claimed atomically in the state store
(`AccountStore.claim_totp_step`), so a replayed or shoulder-surfed code, or
a second concurrent submission, is refused.

The seed is stored sealed under the key ring (purpose "totp-secret"), bound
to the account name, so a copied database column is useless without the
keys and one account's sealed seed does not open as another's.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import TextIO

import pyotp

from forwardauth.core.keyring import KeyRing
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.services.keys import totp_sealer

DIGITS = 6
INTERVAL = 30
SKEW = 1  # steps accepted before and after the current one
_CODE_RE = re.compile(r"^[0-9]{6}$")


def new_secret() -> str:
    """A fresh 160-bit base32 seed (what authenticator apps expect)."""
    return pyotp.random_base32(32)


def normalise_code(text: str) -> str | None:
    """The six digits of what a person typed ("123 456", "123-456" are fine), or None."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    digits = re.sub(r"[\s-]", "", text)
    return digits if _CODE_RE.match(digits) else None


def current_step(now: float) -> int:
    return int(now // INTERVAL)


def code_at(secret: str, step: int) -> str:
    """The code for a step (tests and the CLI use it; the server never shows it)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).generate_otp(step)


def match_step(secret: str, code: str, now: float, skew: int = SKEW) -> int | None:
    """The step `code` is valid for within the skew window, or None.

    Every candidate is compared (in constant time) even after a match, so the
    time taken does not say which step matched.
    """
    norm = normalise_code(code)
    if norm is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
    now_step = current_step(now)
    found: int | None = None
    for step in range(now_step - skew, now_step + skew + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode(), norm.encode()) and found is None:
            found = step
    return found


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(name=username, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The QR code of `uri` as an inline <svg> element (no script, no style attribute)."""
    import segno  # here, not at the top: it costs 60 ms of every start (xml.sax), for a page seldom shown

    qr = segno.make(uri, error="m")
    return qr.svg_inline(scale=5, border=2, dark="#111", light="#fff", title="QR code for your authenticator app",
                         omitsize=True)


def qr_terminal(uri: str, out: TextIO) -> None:
    """The QR code drawn with block characters on a terminal."""
    import segno

    segno.make(uri, error="m").terminal(out=out, compact=True)


class SecretBox:
    """Seals TOTP seeds for storage, and enrolment-in-progress values for forms."""

    def __init__(self, ring: KeyRing) -> None:
        self._stored = totp_sealer(ring)  # at rest ("data" role): opens until re-sealed (keys reseal)
        self._pending = Sealer(ring, "totp-enroll")
        self._ring = ring

    def seal(self, username: str, secret: str) -> str:
        return self._stored.seal(json.dumps({"u": username, "s": secret}).encode())

    def open(self, username: str, sealed: str) -> str:
        """The seed. Raises SealError when it does not open or belongs to another account."""
        d = json.loads(self._stored.open(sealed))
        if not isinstance(d, dict) or d.get("u") != username or not isinstance(d.get("s"), str):
            raise SealError("sealed for another account")
        return d["s"]

    def needs_reseal(self, sealed: str) -> bool:
        """Sealed by an older key: re-seal while that key is still in the ring."""
        return sealed.partition(".")[0] != self._ring.current.id

    def seal_pending(self, username: str, secret: str, now: float, ttl: float = 900.0) -> str:
        """A form value carrying a seed being enrolled, for `ttl` seconds, for this user only."""
        return self._pending.seal(json.dumps({"u": username, "s": secret, "exp": now + ttl}).encode())

    def open_pending(self, username: str, value: str, now: float | None = None) -> str | None:
        """The seed from `seal_pending`, or None when tampered, expired or another user's."""
        try:
            d = json.loads(self._pending.open(value))
        except (SealError, ValueError):
            return None
        now = time.time() if now is None else now
        if (
            not isinstance(d, dict)
            or d.get("u") != username
            or not isinstance(d.get("s"), str)
            or not isinstance(d.get("exp"), (int, float))
            or d["exp"] < now
        ):
            return None
        return d["s"]
