"""Authenticated encryption of small values (cookies) under the key ring.

Format: ``<key id>.<base64url(nonce || AES-256-GCM ciphertext)>``. The key id
in clear means opening is a single try; the purpose and key id are bound in
as associated data, so a value sealed for one purpose (or re-labelled with
another key id) does not open as another.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forwardauth.core.keyring import KEY_ID_RE, KeyRing, b64d, b64e

NONCE_BYTES = 12


class SealError(ValueError):
    """Why a value did not open. The message never contains the value."""


class Sealer:
    """`role`: which keys of the ring open it ("cookies" or "data", see core.keyring)."""

    def __init__(self, ring: KeyRing, purpose: str, max_length: int = 4096, role: str = "cookies"):
        self.ring = ring
        self.purpose = purpose
        self.max_length = max_length
        self.role = role
        self._aead: dict[str, AESGCM] = {}

    def _cipher(self, key_id: str) -> AESGCM:
        c = self._aead.get(key_id)
        if c is None:
            c = AESGCM(self.ring.derive(key_id, "seal:" + self.purpose))
            self._aead[key_id] = c
        return c

    def _aad(self, key_id: str) -> bytes:
        return f"forwardauth|{self.purpose}|{key_id}".encode()

    def seal(self, plaintext: bytes) -> str:
        kid = self.ring.current.id
        nonce = os.urandom(NONCE_BYTES)
        ct = self._cipher(kid).encrypt(nonce, plaintext, self._aad(kid))
        out = f"{kid}.{b64e(nonce + ct)}"
        if len(out) > self.max_length:
            raise SealError("sealed value too large")
        return out

    def open(self, token: str) -> bytes:
        if len(token) > self.max_length:
            raise SealError("oversized")
        kid, dot, body = token.partition(".")
        if not dot or not KEY_ID_RE.match(kid):
            raise SealError("malformed")
        if self.ring.opener(kid, self.role) is None:
            raise SealError("unknown key" if self.ring.get(kid) is None else f"key retired for {self.role}")
        try:
            raw = b64d(body)
        except ValueError:
            raise SealError("malformed") from None
        if len(raw) < NONCE_BYTES + 16:
            raise SealError("truncated")
        try:
            return self._cipher(kid).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(kid))
        except InvalidTag:
            raise SealError("tampered") from None
