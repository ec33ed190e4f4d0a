"""The pure parts of the OIDC login: the per-login state, the authorization
request, and the ID-token claim checks. No I/O, so every refusal is testable.

Facts this relies on (OIDC Core): `acr_values` is a wish the provider may
ignore, so the level is computed from the returned `acr`/`amr` only; an
essential `acr` in a `claims` request makes a conforming provider fail rather
than answer lower; with `max_age`, `auth_time` is required.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urlencode

from forwardauth.levels import Levels
from forwardauth.oidc.settings import OidcConfig


class LoginError(Exception):
    """A refused callback. `message` is safe to show; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LoginState:
    """What the callback must check, sealed in a short-lived per-login cookie."""

    state: str
    nonce: str
    verifier: str
    rd: str
    level: str
    max_age: float | None
    created: float
    hint: str | None = None  # the signed-in subject when this is a step-up

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "LoginState":
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("bad login state")
        s = cls(**d)
        for f in ("state", "nonce", "verifier", "rd", "level"):
            if not isinstance(getattr(s, f), str):
                raise ValueError("bad login state")
        return s


def new_login(rd: str, level: str, max_age: float | None, now: float, hint: str | None) -> LoginState:
    return LoginState(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=secrets.token_urlsafe(48),
        rd=rd,
        level=level,
        max_age=max_age,
        created=now,
        hint=hint,
    )


def login_cookie_name(prefix: str, state: str) -> str:
    """One cookie per login, so logins in several tabs do not overwrite each other."""
    return f"{prefix}_login_{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(
    endpoint: str,
    cfg: OidcConfig,
    levels: Levels,
    login: LoginState,
    redirect_uri: str,
    force_login: bool,
) -> str:
    acr = levels[login.level].acr
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": cfg.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(cfg.scopes),
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": pkce_challenge(login.verifier),
        "code_challenge_method": "S256",
    }
    params.update(dict(cfg.extra_auth_params))
    if acr:
        # Any level at or above the required one satisfies; ask for the required one first.
        values = [a for lv in levels.and_above(login.level) for a in lv.acr]
        params["acr_values"] = " ".join(values)
        if cfg.essential_acr:
            params["claims"] = json.dumps({"id_token": {"acr": {"essential": True, "values": values}}},
                                          separators=(",", ":"))
    if login.max_age is not None:
        params["max_age"] = str(int(login.max_age))
    if force_login:
        params["prompt"] = "login"
    if login.hint:
        params["login_hint"] = login.hint
    sep = "&" if "?" in endpoint else "?"
    return endpoint + sep + urlencode(params)


@dataclass(frozen=True)
class Proven:
    """What a valid ID token proves."""

    sub: str
    level: str | None
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    acr: str | None


def check_claims(
    claims: Mapping[str, Any],
    cfg: OidcConfig,
    issuer: str,
    levels: Levels,
    login: LoginState,
    now: float,
) -> Proven:
    """Every check OIDC Core 3.1.3.7 asks of a relying party, on verified claims."""
    skew = cfg.clock_skew
    if claims.get("iss") != issuer:
        raise LoginError(401, "ID token from the wrong issuer")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if cfg.client_id not in auds:
        raise LoginError(401, "ID token not issued for this client (aud)")
    azp = claims.get("azp")
    if (len(auds) > 1 or azp is not None) and azp != cfg.client_id:
        raise LoginError(401, "ID token authorized party (azp) is not this client")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _number(exp) or now > exp + skew:
        raise LoginError(401, "ID token expired")
    if not _number(iat) or iat > now + skew or now - iat > cfg.login_timeout + skew:
        raise LoginError(401, "ID token issued at an unacceptable time (iat)")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), login.nonce.encode()):
        raise LoginError(401, "ID token nonce does not match this login")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise LoginError(401, "ID token has no valid subject")
    if login.max_age is not None:
        auth_time = claims.get("auth_time")
        if not _number(auth_time):
            raise LoginError(401, "ID token lacks auth_time although max_age was requested")
        if now - auth_time > login.max_age + skew:
            raise LoginError(401, "the provider did not re-authenticate within max_age")
    acr = claims.get("acr") if isinstance(claims.get("acr"), str) else None
    amr = claims.get("amr") if isinstance(claims.get("amr"), list) else None
    level = levels.from_claims(acr, [m for m in amr or () if isinstance(m, str)])
    groups = claims.get(cfg.groups_claim, [])
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        groups = []
    return Proven(
        sub=sub,
        level=level.name if level else None,
        email=_text(claims.get("email")),
        name=_text(claims.get("name")) or _text(claims.get("preferred_username")),
        groups=tuple(g for g in groups if isinstance(g, str) and 0 < len(g) <= 255)[:256],
        acr=acr,
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and len(v) <= 255 else None
