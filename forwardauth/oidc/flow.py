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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard
from urllib.parse import urlencode

from forwardauth.core.levels import Levels
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
    # True when the request made the provider re-authenticate (prompt=login
    # or max_age): only then is the callback's own time a proof time.
    forced: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LoginState:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("bad login state")
        s = cls(**d)
        for f in ("state", "nonce", "verifier", "rd", "level"):
            if not isinstance(getattr(s, f), str):
                raise ValueError("bad login state")
        if not _number(s.created) or not (s.max_age is None or _number(s.max_age)) \
                or not (s.hint is None or isinstance(s.hint, str)) or not isinstance(s.forced, bool):
            raise ValueError("bad login state")
        return s


def new_login(rd: str, level: str, max_age: float | None, now: float, hint: str | None,
              forced: bool = False) -> LoginState:
    return LoginState(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=secrets.token_urlsafe(48),
        rd=rd,
        level=level,
        max_age=max_age,
        created=now,
        hint=hint,
        forced=forced,
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
            id_token: dict[str, Any] = {"acr": {"essential": True, "values": values}}
            if force_login or login.max_age is not None:
                # When the re-authentication happened is what the callback checks.
                id_token["auth_time"] = {"essential": True}
            params["claims"] = json.dumps({"id_token": id_token}, separators=(",", ":"))
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
    auth_time: float | None = None  # as the provider reports it


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
    nbf = claims.get("nbf")
    if nbf is not None and (not _number(nbf) or nbf > now + skew):  # RFC 7519 4.1.5
        raise LoginError(401, "ID token not valid yet (nbf)")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), login.nonce.encode()):
        raise LoginError(401, "ID token nonce does not match this login")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise LoginError(401, "ID token has no valid subject")
    if not sub.isprintable():
        # The identity headers drop control characters: "admin\x00" would reach the
        # app as "admin". Two subjects must never become one name.
        raise LoginError(401, "ID token subject contains control or invisible characters")
    auth_time = claims.get("auth_time") if _number(claims.get("auth_time")) else None
    if login.max_age is not None:
        if auth_time is None:
            raise LoginError(401, "ID token lacks auth_time although max_age was requested")
        if now - auth_time > login.max_age + skew:
            raise LoginError(401, "the provider did not re-authenticate within max_age")
    if login.forced and auth_time is not None and auth_time < login.created - skew:
        # prompt=login (or max_age) was sent: an auth_time from before this
        # login started means the provider answered from its existing session.
        raise LoginError(401, "the provider did not re-authenticate as asked (auth_time is older than this sign-in)")
    acr = claims.get("acr") if isinstance(claims.get("acr"), str) else None
    amr = claims.get("amr") if isinstance(claims.get("amr"), list) else None
    level = levels.from_claims(acr, [m for m in amr or () if isinstance(m, str)])
    return Proven(
        sub=sub,
        level=level.name if level else None,
        email=_text(claims.get("email")),
        name=_text(claims.get("name")) or _text(claims.get("preferred_username")),
        groups=groups_of(claims.get(cfg.groups_claim)),
        acr=acr,
        auth_time=float(auth_time) if auth_time is not None else None,
    )


def groups_of(value: Any) -> tuple[str, ...]:
    """A groups claim (ID token or userinfo): a list of names, or one name; anything else is none."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(g for g in value if isinstance(g, str) and 0 < len(g) <= 255)[:256]


def proof_time(proven: Proven, login: LoginState, now: float) -> float | None:
    """When the level the provider proved was proven, for freshness (max_age) checks.

    Forced re-authentication (prompt=login or max_age; check_claims has made
    sure auth_time, when present, is not older than the login): the callback
    itself, since some providers keep auth_time at their session's start after
    a step-up. Otherwise the provider may have answered from an SSO session of
    any age: its auth_time, never later than now. Without auth_time in either
    case: None, no proof time at all, so a route with max_age sends the user
    back to the provider (with max_age, which makes auth_time mandatory).
    """
    if proven.auth_time is None:
        return None
    if login.forced:
        return now
    return min(now, proven.auth_time)


def _number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: Any) -> str | None:
    """A display claim (email, name): none when it is not printable text, since the identity
    headers would pass it on with its control characters dropped (another user's email)."""
    return v if isinstance(v, str) and len(v) <= 255 and v.isprintable() else None
