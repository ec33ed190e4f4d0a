"""The key ring: the first key seals, every listed key opens what its roles say.

Master secrets are never used directly: each purpose (session cookies,
login-state cookies, secrets at rest, ...) gets its own key derived with
HKDF-SHA256, so a key used for one thing cannot be abused for another.

Each key has roles (`ROLES`), so that retiring the cookies of a key does not
retire data stored under it:

- "cookies": what lives in browsers and forms for hours (session cookies,
  login states, CSRF tokens, a TOTP set-up in progress, sign-out state);
- "data": what lives in the state store or in clients for months (TOTP
  secrets and service accounts' database credentials, sealed; the root of
  every API token, derived from the key it was minted under).

A key without "roles" in the file has both; the first key (it seals and
mints) must have both. `keys retire` takes "cookies" away (its sessions
end; its data still opens), `keys reseal` seals data at rest anew under
the first key, and `keys remove` says what removing a key retires (the
tokens minted under it, any data not re-sealed) before it does it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from forwardauth.core.shown import show

KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SECRET_BYTES = 32
ROLES = ("cookies", "data")


class KeyRingError(ValueError):
    pass


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Strict base64url decoding (no padding, no stray characters)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Key:
    id: str
    secret: bytes = field(repr=False)
    created: float = 0.0
    roles: tuple[str, ...] = ROLES  # what it still opens (see the module)


@dataclass(frozen=True)
class SigningKey:
    """An asymmetric key for JWTs (ES256 on P-256): the first signs, all are
    published in the JWKS, so rotating keeps tokens signed by the old one valid."""

    id: str
    private: ec.EllipticCurvePrivateKey = field(repr=False)
    created: float = 0.0
    alg: str = "ES256"


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[Key, ...]
    # Added later; a file without a "signing" list still loads (no JWTs until
    # `forwardauth keys generate --rotate FILE` adds one).
    signing: tuple[SigningKey, ...] = ()

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("key ring is empty")
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyRingError("key ids must be unique")
        sids = [k.id for k in self.signing]
        if len(set(sids)) != len(sids):
            raise KeyRingError("signing key ids must be unique")
        every: tuple[Key | SigningKey, ...] = (*self.keys, *self.signing)
        for k in every:
            if not KEY_ID_RE.match(k.id):
                raise KeyRingError(f"key id {k.id!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if isinstance(k, Key) and len(k.secret) < SECRET_BYTES:
                raise KeyRingError(f"key {k.id!r}: secret must be at least {SECRET_BYTES} bytes")
            if isinstance(k, Key) and (not k.roles or any(r not in ROLES for r in k.roles)):
                raise KeyRingError(f"key {k.id!r}: roles must be some of {', '.join(ROLES)}")
        if set(self.keys[0].roles) != set(ROLES):
            raise KeyRingError(f"key {self.keys[0].id!r} is the first key (it seals): it must have every role "
                               f"({', '.join(ROLES)})")
        object.__setattr__(self, "_by_id", {k.id: k for k in self.keys})
        object.__setattr__(self, "_derived", {})

    @property
    def current(self) -> Key:
        return self.keys[0]

    def get(self, key_id: str) -> Key | None:
        return self._by_id.get(key_id)  # type: ignore[attr-defined]

    def opener(self, key_id: str, role: str) -> Key | None:
        """The key `key_id` if it is in the ring and still opens `role`'s values."""
        k = self._by_id.get(key_id)  # type: ignore[attr-defined]
        return k if k is not None and role in k.roles else None

    def derive(self, key_id: str, purpose: str, length: int = 32) -> bytes:
        """The subkey of `key_id` for `purpose` (memoised; HKDF is not free)."""
        cache: dict = self._derived  # type: ignore[attr-defined]
        ck = (key_id, purpose, length)
        out = cache.get(ck)
        if out is None:
            key = self._by_id[key_id]  # type: ignore[attr-defined]
            out = HKDF(
                algorithm=hashes.SHA256(),
                length=length,
                salt=b"forwardauth key ring v1",
                info=purpose.encode("utf-8"),
            ).derive(key.secret)
            cache[ck] = out
        return out

    # --- files -----------------------------------------------------------

    @property
    def current_signing(self) -> SigningKey | None:
        return self.signing[0] if self.signing else None

    @classmethod
    def from_entries(cls, entries: object, where: str, signing: object = None) -> KeyRing:
        if not isinstance(entries, list) or not entries:
            raise KeyRingError(f"{where}: must be a non-empty list of {{id, secret}}")
        keys = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("secret"), str):
                raise KeyRingError(f"{where}[{i}]: each key needs string fields 'id' and 'secret'")
            try:
                secret = b64d(e["secret"])
            except ValueError:
                raise KeyRingError(f"{where}[{i}] (id {show(e['id'], 40)}): secret is not base64url") from None
            keys.append(Key(e["id"], secret, _created(e, f"{where}[{i}] (id {show(e['id'], 40)})"),
                            _roles(e, f"{where}[{i}] (id {show(e['id'], 40)})")))
        return cls(tuple(keys), _signing_entries(signing, where.rsplit(":", 1)[0] + ": signing"))

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise KeyRingError(f"{p}: key ring file not found (make one: forwardauth keys generate -o {p})") from None
        except (OSError, ValueError) as exc:
            raise KeyRingError(f"{p}: cannot read key ring: {exc.__class__.__name__}") from None
        if not isinstance(data, dict):
            raise KeyRingError(f"{p}: key ring must be a JSON object with a 'keys' list")
        return cls.from_entries(data.get("keys"), f"{p}: keys", data.get("signing"))

    def to_json(self) -> str:
        out: dict = {
            "version": 1,
            "keys": [{"id": k.id, "secret": b64e(k.secret), "created": int(k.created),
                      **({"roles": list(k.roles)} if set(k.roles) != set(ROLES) else {})} for k in self.keys],
        }
        if self.signing:
            out["signing"] = [
                {"id": k.id, "alg": k.alg, "private": b64e(k.private.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
                 "created": int(k.created)}
                for k in self.signing
            ]
        return json.dumps(out, indent=2)

    def save(self, path: str | Path) -> None:
        """Written atomically with mode 0600: a key ring is a secret."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=p.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json() + "\n")
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def new_key(existing: tuple[Key, ...] = ()) -> Key:
    taken = {k.id for k in existing}
    while True:
        kid = "k" + secrets.token_hex(4)
        if kid not in taken:
            return Key(kid, secrets.token_bytes(SECRET_BYTES), time.time())


def new_signing_key(existing: tuple[SigningKey, ...] = ()) -> SigningKey:
    taken = {k.id for k in existing}
    while True:
        kid = "s" + secrets.token_hex(4)
        if kid not in taken:
            return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), time.time())


def generate() -> KeyRing:
    return KeyRing((new_key(),), (new_signing_key(),))


def rotate(ring: KeyRing) -> KeyRing:
    """A ring whose new first keys seal and sign; the old keys still open (every role they had) and verify."""
    return KeyRing((new_key(ring.keys),) + ring.keys, (new_signing_key(ring.signing),) + ring.signing)


def retire(ring: KeyRing, key_id: str, role: str) -> KeyRing:
    """The ring with `role` taken from `key_id` (never from the first key)."""
    k = ring.get(key_id)
    if k is None:
        raise KeyRingError(f"no key {key_id!r} in the ring")
    if k is ring.current:
        raise KeyRingError(f"{key_id} is the first key (it seals): rotate first (keys generate --rotate)")
    if role not in k.roles:
        return ring
    if set(k.roles) == {role}:
        raise KeyRingError(f"{key_id} opens only {role} now: remove it instead (keys remove)")
    keys = tuple(replace(x, roles=tuple(r for r in x.roles if r != role)) if x is k else x for x in ring.keys)
    return KeyRing(keys, ring.signing)


def remove(ring: KeyRing, key_id: str) -> KeyRing:
    """The ring without `key_id` (never the first key)."""
    k = ring.get(key_id)
    if k is None:
        raise KeyRingError(f"no key {key_id!r} in the ring")
    if k is ring.current:
        raise KeyRingError(f"{key_id} is the first key (it seals): rotate first (keys generate --rotate)")
    return KeyRing(tuple(x for x in ring.keys if x is not k), ring.signing)


def _roles(entry: dict, where: str) -> tuple[str, ...]:
    """The optional "roles" field: a list of some of ROLES (absent: all)."""
    v = entry.get("roles")
    if v is None:
        return ROLES
    if not isinstance(v, list) or not v or any(r not in ROLES for r in v) or len(set(v)) != len(v):
        raise KeyRingError(f"{where}: roles must be a non-empty list of some of {', '.join(ROLES)}")
    return tuple(r for r in ROLES if r in v)


def _signing_entries(entries: object, where: str) -> tuple[SigningKey, ...]:
    """The optional "signing" list: [{id, alg: ES256, private: base64url PKCS#8 DER, created}]."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise KeyRingError(f"{where}: must be a list of {{id, alg, private}}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("private"), str):
            raise KeyRingError(f"{where}[{i}]: each signing key needs string fields 'id' and 'private'")
        if e.get("alg", "ES256") != "ES256":
            raise KeyRingError(f"{where}[{i}] (id {show(e['id'], 40)}): alg must be ES256")
        try:
            key = serialization.load_der_private_key(b64d(e["private"]), password=None)
        except (ValueError, TypeError):
            raise KeyRingError(f"{where}[{i}] (id {show(e['id'], 40)}): private is not a base64url PKCS#8 key"
                               ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise KeyRingError(f"{where}[{i}] (id {show(e['id'], 40)}): must be a P-256 key")
        out.append(SigningKey(e["id"], key, _created(e, f"{where}[{i}] (id {show(e['id'], 40)})")))
    return tuple(out)


def _created(entry: dict, where: str) -> float:
    """The optional "created" field: unix seconds (a number), or absent/null."""
    v = entry.get("created")
    if v is None:
        return 0.0
    if isinstance(v, str):  # tolerated: "1700000000"
        try:
            v = float(v)
        except ValueError:
            raise KeyRingError(f"{where}: created must be a time in unix seconds, got {show(v, 40)}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise KeyRingError(f"{where}: created must be a time in unix seconds, got {show(v, 40)}")
    return float(v)


