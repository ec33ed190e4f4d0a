"""Password hashing with scrypt (hashlib.scrypt, i.e. OpenSSL), parameters kept per hash.

A record reads ``scrypt$n=2^15,r=8,p=1$<salt>$<hash>`` (salt and hash in
unpadded base64url). Because the cost is written in each record, the
configured cost can be raised at any time: old hashes still verify, and
`needs_rehash` tells the sign-in to re-hash with the new cost once the
password is known to be right.

Passwords are NFKC-normalised first, so the same characters typed on two
keyboards (composed or decomposed accents) are the same password.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from forwardauth.core.keyring import b64d, b64e

SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD_CHARS = 1024  # longer input is refused before hashing (a cheap DoS otherwise)
_RECORD_RE = re.compile(r"^scrypt\$n=2\^(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})"
                        r"\$([A-Za-z0-9_-]{16,64})\$([A-Za-z0-9_-]{32,128})$")


class PasswordError(ValueError):
    """A password that cannot be used (too long, empty). Never contains the password."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: N = 2**log_n, block size r, parallelism p.

    2^15, 8, 1 takes about 32 MiB and 50-100 ms on a current server: slow for
    a guesser, quick enough for a person signing in.
    """

    log_n: int = 15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (10 <= self.log_n <= 22 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("scrypt parameters out of range (log_n 10-22, r 1-32, p 1-16)")

    @property
    def n(self) -> int:
        return 1 << self.log_n

    @property
    def maxmem(self) -> int:
        return 128 * self.r * (self.n + self.p + 2) + (16 << 20)

    def label(self) -> str:
        return f"n=2^{self.log_n},r={self.r},p={self.p}"


DEFAULT_PARAMS = ScryptParams()


def _prepare(password: str) -> bytes:
    if not isinstance(password, str) or not password:
        raise PasswordError("password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordError(f"password is longer than {MAX_PASSWORD_CHARS} characters")
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _derive(secret: bytes, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=params.n, r=params.r, p=params.p, maxmem=params.maxmem,
                          dklen=HASH_BYTES)


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """A new record with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${params.label()}${b64e(salt)}${b64e(_derive(_prepare(password), salt, params))}"


def parse_record(record: str) -> tuple[ScryptParams, bytes, bytes] | None:
    """(params, salt, hash), or None for anything that is not a well-formed record."""
    m = _RECORD_RE.fullmatch(record or "")
    if not m:
        return None
    try:
        params = ScryptParams(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return params, b64d(m.group(4)), b64d(m.group(5))
    except ValueError:
        return None


def verify_password(password: str, record: str) -> bool:
    """True when `password` matches `record`. Malformed records and unusable
    passwords are simply False (the caller answers "wrong password")."""
    parsed = parse_record(record)
    if parsed is None:
        return False
    params, salt, expected = parsed
    try:
        secret = _prepare(password)
    except PasswordError:
        return False
    return hmac.compare_digest(_derive(secret, salt, params), expected)


def needs_rehash(record: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """True when `record` was made with other parameters than `params` (or is unreadable)."""
    parsed = parse_record(record)
    return parsed is None or parsed[0] != params or len(parsed[2]) != HASH_BYTES


@lru_cache(maxsize=8)
def _dummy_record(params: ScryptParams) -> str:
    return hash_password(secrets.token_urlsafe(24), params)


def dummy_verify(password: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """Do the work of a verification that cannot succeed.

    Used for unknown users, system accounts and accounts without a password,
    so that a wrong username costs the same time as a wrong password.
    Always False.
    """
    verify_password(password if password else "-", _dummy_record(params))
    return False


_WORDS_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def generate_password(groups: int = 4, size: int = 5) -> str:
    """A random password that is easy to read out and type (about 99 bits for 4x5)."""
    return "-".join("".join(secrets.choice(_WORDS_ALPHABET) for _ in range(size)) for _ in range(groups))
