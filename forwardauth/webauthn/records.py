"""The credential record and the store protocol the WebAuthn part needs.

A credential belongs to exactly one user; it is found by its id when a passkey
signs in without a name. Its signature counter only moves forward: the store
applies the counter rule and locks the credential in the same atomic step, so
two replicas verifying two assertions at once cannot both pass a regression.
The rule itself is `counter_advances`, written once here and used by every
backend.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from forwardauth.keyring import b64e

NAME_MAX = 64
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
TRANSPORTS = frozenset({"usb", "nfc", "ble", "smart-card", "hybrid", "internal"})


@dataclass(frozen=True)
class Credential:
    id: bytes  # the credential id chosen by the authenticator
    user: str  # the forwardauth user (sub) it belongs to
    user_handle: bytes  # the WebAuthn user.id given at registration: random, never the user name
    public_key: bytes  # the COSE key, CBOR-encoded as the authenticator sent it
    sign_count: int
    name: str
    created: float
    transports: tuple[str, ...] = ()
    aaguid: str = "00000000-0000-0000-0000-000000000000"
    backup_eligible: bool = False  # BE: may be synced to other devices (a multi-device passkey)
    backed_up: bool = False  # BS: is synced now (updated on every use)
    user_verifying: bool = False  # UV seen at registration or since: the authenticator can verify its user
    discoverable: bool | None = None  # a resident key (credProps.rk); None: the browser did not say
    last_used: float | None = None
    locked: str | None = None  # why it no longer works (a counter that went backwards), None: usable

    @property
    def key(self) -> str:
        """The id as text (base64url), as the browser and the pages spell it."""
        return b64e(self.id)


class Advance(enum.Enum):
    """What recording a verified use did."""

    ADVANCED = "advanced"  # counter stored, last use recorded
    REGRESSED = "regressed"  # counter did not move forward: the credential is now locked
    LOCKED = "locked"  # it was already locked: nothing changed
    GONE = "gone"  # removed meanwhile


class StoreError(Exception):
    """A refused write; the message is for the user and names no key material."""


class TooManyCredentials(StoreError):
    pass


class DuplicateCredential(StoreError):
    pass


def counter_advances(stored: int, new: int) -> bool:
    """WebAuthn's signature counter rule (Level 3, 7.2 step 22).

    Authenticators that keep no counter (most passkeys) always send 0: 0 after
    0 is fine. Otherwise the counter must go strictly up; anything else means
    two copies of the key may exist (a clone), or a replayed assertion.
    """
    if new == 0 and stored == 0:
        return True
    return new > stored


def check_name(name: str) -> str:
    """A credential's display name, trimmed; raises StoreError naming the problem."""
    name = name.strip() if isinstance(name, str) else ""
    if not _NAME_RE.match(name):
        raise StoreError(f"A name is 1 to {NAME_MAX} printable characters.")
    return name


def fingerprint(credential_id: bytes) -> str:
    """A short, stable label of a credential for logs and audit (not the id itself)."""
    return hashlib.sha256(b"webauthn-credential:" + credential_id).hexdigest()[:16]


class CredentialStore(Protocol):
    """Persistence of WebAuthn credentials (SQLite, Redis, memory)."""

    async def credentials(self, user: str) -> list[Credential]:
        """The user's credentials, oldest first."""
        ...

    async def credential(self, credential_id: bytes) -> Credential | None:
        """Find one by its id (passwordless sign-in starts with nothing else)."""
        ...

    async def add(self, credential: Credential, max_per_user: int) -> None:
        """Store a new credential. Atomic: raises DuplicateCredential when the id
        exists (for anyone), TooManyCredentials when the user has max_per_user."""
        ...

    async def rename(self, user: str, credential_id: bytes, name: str) -> bool:
        """False when the user has no such credential."""
        ...

    async def remove(self, user: str, credential_id: bytes) -> bool:
        """False when the user has no such credential."""
        ...

    async def remove_all(self, user: str) -> int:
        """When the account goes: how many were removed."""
        ...

    async def advance(self, credential_id: bytes, sign_count: int, backed_up: bool, user_verified: bool,
                      now: float, lock_reason: str) -> Advance:
        """Record a verified use, atomically: when `counter_advances(stored, sign_count)`
        store the counter, the backup state, last use (and UV capability when
        seen); otherwise lock the credential with `lock_reason` (REGRESSED)."""
        ...
