"""Macaroons: bearer tokens a holder can narrow offline, built on `cryptography`'s HMAC.

Construction (Birgisson et al., "Macaroons: Cookies with Contextual Caveats
for Decentralized Authorization in the Cloud", NDSS 2014), first-party
caveats only:

    sig_0 = HMAC-SHA256(root_key, identifier)
    sig_i = HMAC-SHA256(sig_{i-1}, caveat_i)
    token = (identifier, caveat_1 .. caveat_n, sig_n)

Only the issuer knows `root_key`, so only the issuer can make `sig_0`. A
holder who has `sig_n` can append a caveat (compute `sig_{n+1}`) but cannot
remove or reorder one: that would need an earlier signature in the chain,
which HMAC does not reveal. Verification recomputes the chain from the root
key and compares the result with `hmac.compare_digest`.

The root key of each token is `HMAC(derive(key_id, "macaroon"), token_id)`:
per-purpose HKDF subkey of the key ring (so this key is never a cookie key),
then per-token, so one token's root key says nothing about another's. The
identifier names the key id and the token id, which is all a verifier needs.

Why not pymacaroons: it is unmaintained (0.13 from 2018, classifiers stop at
Python 3.9, pins PyNaCl<2), and its general-callback verifier accepts a caveat
when *any* callback says yes, so one loose callback accepts everything. Here
the caveat language is closed and checked in `caveats.py` by exact matchers,
and the serialisation is a small fixed binary layout parsed strictly.

Wire format: ``fa1_`` + base64url (no padding) of

    version byte (1)
    u16 length + identifier bytes
    u8 caveat count, then per caveat: u16 length + UTF-8 caveat text
    32-byte signature
"""

from __future__ import annotations

import hmac as std_hmac
import re
import struct
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from forwardauth.core.keyring import KEY_ID_RE, KeyRing, b64d, b64e

PREFIX = "fa1_"
VERSION = 1
SIG_BYTES = 32
MAX_TOKEN_CHARS = 4096
MAX_CAVEATS = 32
MAX_CAVEAT_BYTES = 512
_ID_RE = re.compile(r"^v1:([A-Za-z0-9_-]{1,32}):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


class TokenError(ValueError):
    """Why a token was refused. The message never contains the token."""


def _mac(key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class Macaroon:
    identifier: bytes
    caveats: tuple[str, ...]
    signature: bytes

    @property
    def key_id(self) -> str:
        return parse_identifier(self.identifier)[0]

    @property
    def token_id(self) -> str:
        return parse_identifier(self.identifier)[1]

    def add_caveat(self, caveat: str) -> Macaroon:
        """A narrower macaroon. Needs no key: sig' = HMAC(sig, caveat)."""
        data = _caveat_bytes(caveat)
        if len(self.caveats) >= MAX_CAVEATS:
            raise TokenError(f"too many caveats (at most {MAX_CAVEATS})")
        return Macaroon(self.identifier, self.caveats + (caveat,), _mac(self.signature, data))

    def serialize(self) -> str:
        parts = [bytes([VERSION]), struct.pack(">H", len(self.identifier)), self.identifier,
                 bytes([len(self.caveats)])]
        for c in self.caveats:
            data = c.encode("utf-8")
            parts += [struct.pack(">H", len(data)), data]
        parts.append(self.signature)
        out = PREFIX + b64e(b"".join(parts))
        if len(out) > MAX_TOKEN_CHARS:
            raise TokenError("token too large")
        return out


def _caveat_bytes(caveat: str) -> bytes:
    if not isinstance(caveat, str) or not caveat:
        raise TokenError("empty caveat")
    data = caveat.encode("utf-8")
    if len(data) > MAX_CAVEAT_BYTES:
        raise TokenError("caveat too long")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in caveat):
        raise TokenError("caveat contains control characters")
    return data


def make_identifier(key_id: str, token_id: str) -> bytes:
    ident = f"v1:{key_id}:{token_id}".encode("ascii")
    parse_identifier(ident)
    return ident


def parse_identifier(identifier: bytes) -> tuple[str, str]:
    """(key id, token id). Raises TokenError on anything else."""
    try:
        text = identifier.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError("malformed identifier") from None
    m = _ID_RE.match(text)
    if not m or not KEY_ID_RE.match(m.group(1)):
        raise TokenError("malformed identifier")
    return m.group(1), m.group(2)


def new_token_id() -> str:
    return str(uuid.uuid4())


def root_key(ring: KeyRing, key_id: str, token_id: str) -> bytes:
    """Per-token root key: HMAC(HKDF(master, "macaroon"), token id)."""
    if ring.opener(key_id, "data") is None:  # a token root is data: retiring cookies keeps tokens working
        raise TokenError("unknown key")
    return _mac(ring.derive(key_id, "macaroon"), b"token:" + token_id.encode("ascii"))


def mint(ring: KeyRing, token_id: str, caveats: list[str] | tuple[str, ...], key_id: str | None = None) -> Macaroon:
    """A new macaroon under the ring's newest key (or `key_id`)."""
    kid = key_id or ring.current.id
    ident = make_identifier(kid, token_id)
    m = Macaroon(ident, (), _mac(root_key(ring, kid, token_id), ident))
    for c in caveats:
        m = m.add_caveat(c)
    return m


def deserialize(token: str) -> Macaroon:
    """Parse strictly: any trailing byte, bad length or bad encoding is an error."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("oversized token")
    if not token.startswith(PREFIX):
        raise TokenError("not a forwardauth token")
    try:
        raw = b64d(token[len(PREFIX):])
    except ValueError:
        raise TokenError("malformed token") from None
    try:
        if raw[0] != VERSION:
            raise TokenError("unsupported token version")
        pos = 1
        (n,) = struct.unpack_from(">H", raw, pos)
        pos += 2
        ident = raw[pos:pos + n]
        if len(ident) != n:
            raise TokenError("truncated token")
        pos += n
        parse_identifier(ident)
        count = raw[pos]
        pos += 1
        if count > MAX_CAVEATS:
            raise TokenError("too many caveats")
        caveats = []
        for _ in range(count):
            (n,) = struct.unpack_from(">H", raw, pos)
            pos += 2
            data = raw[pos:pos + n]
            if len(data) != n:
                raise TokenError("truncated token")
            pos += n
            text = data.decode("utf-8")
            _caveat_bytes(text)
            caveats.append(text)
        sig = raw[pos:]
    except (IndexError, struct.error):
        raise TokenError("truncated token") from None
    except UnicodeDecodeError:
        raise TokenError("malformed caveat") from None
    if len(sig) != SIG_BYTES:
        raise TokenError("truncated token" if len(sig) < SIG_BYTES else "malformed token")
    return Macaroon(ident, tuple(caveats), sig)


def verify_signature(ring: KeyRing, m: Macaroon) -> None:
    """Recompute the HMAC chain from the root key; constant-time compare. Raises TokenError."""
    key_id, token_id = parse_identifier(m.identifier)
    sig = _mac(root_key(ring, key_id, token_id), m.identifier)
    for c in m.caveats:
        sig = _mac(sig, c.encode("utf-8"))
    if not std_hmac.compare_digest(sig, m.signature):
        raise TokenError("bad signature")
