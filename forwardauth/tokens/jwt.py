"""Short-lived JWTs: the token exchange and the identity assertion header.

Signing and parsing are joserfc's (never a hand-written JWT parser). The
algorithm is pinned by configuration, not taken from the token: ES256 with
the key ring's P-256 signing keys (public halves served as a JWKS, so apps
verify locally), or HS512 with a shared secret for apps that verify with one
(`tokens.jwt.algorithm: HS512`). Verification passes exactly one algorithm to joserfc and checks
the header's `alg` and `kid` before that, so `alg: none`, another algorithm,
or HS256 "signed" with the public key (key confusion) are refused.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, KeySetSerialization, OctKey

from forwardauth.core import jsonstrict
from forwardauth.core.keyring import KeyRing, b64d, b64e

MAX_JWT_CHARS = 8192
HS512_SECRET_BYTES = 64


class JwtError(ValueError):
    """Why a JWT was refused or cannot be made. Never contains the token."""


# How long apps may cache /.well-known/jwks.json (its Cache-Control max-age).
JWKS_MAX_AGE = 300


@dataclass
class JwtSigner:
    """Knows every key that verifies (all published in the JWKS) and signs with
    the newest key that has been published for at least JWKS_MAX_AGE.

    A key rotated in (`keys generate --rotate`) is published at once but signs
    only once every app's cached JWKS can hold it: signing with it earlier
    would make apps with a cached copy refuse the JWTs for up to 5 minutes.
    When no key is that old (a new ring), the oldest one signs."""

    algorithm: str  # "ES256" or "HS512"
    issuer: str
    signing_key: ECKey | OctKey | None  # the newest key
    verify_keys: KeySet | OctKey | None
    public_jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    # (created, key), newest first: the candidates for signing
    candidates: tuple[tuple[float, ECKey | OctKey], ...] = ()

    @classmethod
    def es256(cls, ring: KeyRing, issuer: str) -> JwtSigner:
        keys = [ECKey.import_key(k.private, {"kid": k.id, "alg": "ES256", "use": "sig"}) for k in ring.signing]
        public = {"keys": [dict(k.as_dict(private=False), kid=k.kid, alg="ES256", use="sig") for k in keys]}
        ordered = sorted(zip((k.created for k in ring.signing), keys, strict=True), key=lambda ck: -ck[0])
        every: list[Key] = list(keys)
        return cls("ES256", issuer, keys[0] if keys else None, KeySet(every) if keys else None, public,
                   tuple(ordered))

    def key_for(self, now: float) -> ECKey | OctKey | None:
        """The key that signs at `now` (see the class docstring)."""
        if not self.candidates:
            return self.signing_key
        for created, key in self.candidates:
            if created <= now - JWKS_MAX_AGE:
                return key
        return self.candidates[-1][1]

    @classmethod
    def hs512(cls, secret: bytes, issuer: str) -> JwtSigner:
        if len(secret) < HS512_SECRET_BYTES:
            raise JwtError(f"the HS512 secret must be at least {HS512_SECRET_BYTES} bytes")
        key = OctKey.import_key(secret)
        return cls("HS512", issuer, key, key)

    def sign(self, claims: dict[str, Any], *, audience: str, lifetime: float, now: float) -> str:
        key = self.key_for(now)
        if key is None:
            raise JwtError("no signing key in the key ring (add one: forwardauth keys generate --rotate FILE)")
        body = dict(claims)
        body.update({"iss": self.issuer, "aud": audience, "iat": int(now), "nbf": int(now) - 1,
                     "exp": int(now + lifetime), "jti": str(uuid.uuid4())})
        header: dict[str, Any] = {"alg": self.algorithm, "typ": "JWT"}
        if self.algorithm == "ES256":
            header["kid"] = key.kid
        return jose_jwt.encode(header, body, key, algorithms=[self.algorithm])

    def verify(self, token: str, *, audience: str, now: float, leeway: int = 0) -> dict[str, Any]:
        if self.verify_keys is None:
            raise JwtError("no verification keys")
        return verify(token, self.verify_keys, algorithm=self.algorithm, issuer=self.issuer, audience=audience,
                      now=now, leeway=leeway)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read strictly: no key twice (which `alg`?), nested at most 4 deep (a
    header of 3000 `[` was a RecursionError out of json.loads: found by bench/fuzz.py)."""
    head = token.split(".", 1)[0]
    try:
        data = jsonstrict.loads(b64d(head), 4)
    except ValueError:  # JsonError, binascii.Error
        raise JwtError("malformed JWT header") from None
    if not isinstance(data, dict):
        raise JwtError("malformed JWT header")
    return data


def verify(token: str, keys: KeySet | OctKey | ECKey, *, algorithm: str, issuer: str, audience: str, now: float,
           leeway: int = 0) -> dict[str, Any]:
    """The claims of a JWT signed with exactly `algorithm` by one of `keys`, for
    `audience`, from `issuer`, and not expired. Raises JwtError otherwise."""
    if not isinstance(token, str) or len(token) > MAX_JWT_CHARS:
        raise JwtError("oversized JWT")
    if token.count(".") != 2:
        raise JwtError("malformed JWT")
    header = _header(token)
    if header.get("alg") != algorithm:
        raise JwtError("JWT algorithm not allowed")
    if isinstance(keys, KeySet):
        kid = header.get("kid")
        if not isinstance(kid, str) or not any(k.kid == kid for k in keys.keys):
            raise JwtError("JWT signed by an unknown key")
    try:
        tok = jose_jwt.decode(token, keys, algorithms=[algorithm], decoder_cls=jsonstrict.StrictDecoder)
        registry = jose_jwt.JWTClaimsRegistry(
            now=int(now), leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        registry.validate(tok.claims)
    except JoseError as exc:
        raise JwtError(f"JWT refused: {exc.error}") from None
    except (ValueError, TypeError, RecursionError):
        raise JwtError("malformed JWT") from None
    return dict(tok.claims)


def keyset_from_jwks(jwks: dict[str, Any]) -> KeySet:
    """What an app does with GET /.well-known/jwks.json."""
    return KeySet.import_key_set(cast(KeySetSerialization, jwks))


def load_hs512_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        secret = b64d(text)
    except (OSError, ValueError):
        raise JwtError(f"{path}: cannot read a base64url HS512 secret") from None
    if len(secret) < HS512_SECRET_BYTES:
        raise JwtError(f"{path}: the HS512 secret must be at least {HS512_SECRET_BYTES} bytes")
    return secret


def new_hs512_secret() -> str:
    return b64e(secrets.token_bytes(HS512_SECRET_BYTES))


__all__ = ["JwtError", "JwtSigner", "verify", "keyset_from_jwks", "load_hs512_secret", "new_hs512_secret"]
