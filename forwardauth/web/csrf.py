"""CSRF tokens for the sign-in forms: an HMAC'd double submit.

The browser holds a random nonce in a host-only, HttpOnly, SameSite=Strict
cookie; each form carries HMAC(key, nonce | form | binding) where the key
is derived from the key ring and `binding` is the session id for forms used
while signed in. Another site can neither read the nonce nor compute the
MAC for it.

What the MAC does not stop on its own: anyone can fetch a sign-in page and
get a valid (nonce, token) pair of their own. A sibling subdomain that can
set cookies for the parent domain ("cookie tossing") could plant that nonce
in a victim's browser and post the matching token, signing the victim in as
the attacker (login CSRF; the forms used while signed in are bound to the
session id and are not exposed this way). So when cookies are Secure the
nonce cookie is named with the `__Host-` prefix, which browsers accept only
from this very host (host-only, Secure, Path=/): a sibling cannot set it.
Over plain http (development) there is no such protection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import replace

from forwardauth.core.config import SessionConfig
from forwardauth.core.cookies import set_cookie
from forwardauth.core.keyring import KEY_ID_RE, KeyRing, b64d, b64e

COOKIE_MAX_AGE = 12 * 3600
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")


def cookie_name(session_cookie: str, secure: bool = False) -> str:
    """The CSRF cookie's name: the session cookie's with "-csrf"; with Secure
    cookies always under the __Host- prefix (a __Secure- one is replaced)."""
    base = session_cookie[:100]
    if secure and not base.startswith("__Host-"):
        base = "__Host-" + base.removeprefix("__Secure-")
    return base + "-csrf"


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def valid_nonce(value: str | None) -> bool:
    return bool(value) and _NONCE_RE.match(value) is not None  # type: ignore[arg-type]


def nonce_cookie(cfg: SessionConfig, nonce: str) -> str:
    """Set-Cookie for the nonce: host-only (no Domain), Strict, HttpOnly, Path=/."""
    strict = replace(cfg, same_site="Strict", domain=None)
    return set_cookie(strict, cookie_name(cfg.cookie_name, cfg.secure), nonce, COOKIE_MAX_AGE)


class Csrf:
    def __init__(self, ring: KeyRing):
        self.ring = ring

    def _mac(self, key_id: str, nonce: str, form: str, binding: str) -> bytes:
        key = self.ring.derive(key_id, "csrf")
        return hmac.new(key, f"{nonce}|{form}|{binding}".encode(), hashlib.sha256).digest()

    def token(self, nonce: str, form: str, binding: str = "") -> str:
        kid = self.ring.current.id
        return f"{kid}.{b64e(self._mac(kid, nonce, form, binding))}"

    def check(self, token: str | None, nonce: str | None, form: str, binding: str = "") -> bool:
        """True only for a token made for this nonce, form and binding by a key of the ring."""
        if not token or not valid_nonce(nonce) or len(token) > 100:
            return False
        kid, dot, mac = token.partition(".")
        if not dot or not KEY_ID_RE.match(kid) or self.ring.opener(kid, "cookies") is None:
            return False
        try:
            given = b64d(mac)
        except ValueError:
            return False
        return hmac.compare_digest(given, self._mac(kid, nonce, form, binding))  # type: ignore[arg-type]
