"""WebAuthn credentials in process memory (memory:// state and unit tests).

No await inside a method, so each method is atomic on the event loop, as
the protocol asks of every backend.
"""

from __future__ import annotations

from dataclasses import replace

from forwardauth.webauthn.records import (
    Advance,
    Credential,
    DuplicateCredential,
    TooManyCredentials,
    check_name,
    counter_advances,
)


class MemoryCredentialStore:
    def __init__(self) -> None:
        self._by_id: dict[bytes, Credential] = {}

    async def credentials(self, user: str) -> list[Credential]:
        return sorted((c for c in self._by_id.values() if c.user == user), key=lambda c: (c.created, c.id))

    async def credential(self, credential_id: bytes) -> Credential | None:
        return self._by_id.get(credential_id)

    async def add(self, credential: Credential, max_per_user: int) -> None:
        if credential.id in self._by_id:
            raise DuplicateCredential("This security key or passkey is already registered.")
        if sum(1 for c in self._by_id.values() if c.user == credential.user) >= max_per_user:
            raise TooManyCredentials(f"You already have {max_per_user} security keys and passkeys; remove one "
                                     "first.")
        self._by_id[credential.id] = credential

    def _own(self, user: str, credential_id: bytes) -> Credential | None:
        c = self._by_id.get(credential_id)
        return c if c is not None and c.user == user else None

    async def rename(self, user: str, credential_id: bytes, name: str) -> bool:
        c = self._own(user, credential_id)
        if c is None:
            return False
        self._by_id[credential_id] = replace(c, name=check_name(name))
        return True

    async def remove(self, user: str, credential_id: bytes) -> bool:
        if self._own(user, credential_id) is None:
            return False
        del self._by_id[credential_id]
        return True

    async def remove_all(self, user: str) -> int:
        gone = [k for k, c in self._by_id.items() if c.user == user]
        for k in gone:
            del self._by_id[k]
        return len(gone)

    async def advance(self, credential_id: bytes, sign_count: int, backed_up: bool, user_verified: bool,
                      now: float, lock_reason: str) -> Advance:
        c = self._by_id.get(credential_id)
        if c is None:
            return Advance.GONE
        if c.locked is not None:
            return Advance.LOCKED
        if not counter_advances(c.sign_count, sign_count):
            self._by_id[credential_id] = replace(c, locked=lock_reason)
            return Advance.REGRESSED
        self._by_id[credential_id] = replace(c, sign_count=sign_count, backed_up=backed_up, last_used=now,
                                             user_verifying=c.user_verifying or user_verified)
        return Advance.ADVANCED
