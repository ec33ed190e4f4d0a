"""The `tokens:` config section (its parser is declared with the part in composition.py).

Every option has a safe default, so a config without `tokens:` gets bearer
tokens with the lowest level, ES256 JWTs from the key ring and no identity
assertion header. See config.example.yaml for the commented list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from forwardauth.core.config import Config, Reader
from forwardauth.core.errors import show
from forwardauth.tokens.caveats import ACCOUNT_RE

ALGORITHMS = ("ES256", "HS512")
MAX_TOKEN_LIFETIME = 3650 * 86400.0  # ten years: tokens are revocable, but not forever
MAX_JWT_LIFETIME = 86400.0  # exchanged JWTs are short-lived: they cannot be revoked
MAX_ASSERTION_LIFETIME = 3600.0
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_AUD_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class JwtSettings:
    algorithm: str = "ES256"  # ES256 (key ring signing keys, JWKS) or HS512 (shared secret)
    lifetime: float = 600.0  # exchanged JWTs
    issuer: str | None = None  # default: server.public_url
    audience: str = "forwardauth"  # `aud` of exchanged JWTs
    hs512_secret_file: str | None = None


@dataclass(frozen=True)
class AssertionSettings:
    enabled: bool = False
    header: str = "X-Auth-Request-Jwt"
    lifetime: float = 60.0


@dataclass(frozen=True)
class TokensSettings:
    default_lifetime: float = 30 * 86400.0
    max_lifetime: float = 365 * 86400.0
    default_level: str | None = None  # None: the lowest configured level
    levels: dict[str, str] = field(default_factory=dict)  # account -> its token level
    last_used_flush: float = 10.0
    index_refresh: float = 10.0  # full reload of token and account data (catches group changes)
    stale_grace: float = 30.0
    stale_sessions_up_to: str | None = None
    jwt: JwtSettings = JwtSettings()
    assertion: AssertionSettings = AssertionSettings()

    def level_for(self, account: str, config: Config) -> str:
        return self.levels.get(account) or self.default_level or config.levels.items[0].name


def settings(config: Config) -> TokensSettings:
    """The section, or the defaults when the config has no `tokens:`."""
    return config.sections.get("tokens") or TokensSettings()


def parse(r: Reader, raw: Any, so_far: dict[str, Any]) -> TokensSettings:
    w = "tokens"
    levels = so_far["levels"]
    d = r.mapping(raw, w, {"default_lifetime", "max_lifetime", "default_level", "levels", "last_used_flush",
                           "index_refresh", "stale_grace", "stale_sessions_up_to", "jwt", "assertion"})
    dflt = TokensSettings()

    def dur(dd: dict, key: str, where: str, default: float, low: float, high: float | None = None) -> float:
        v = r.duration(dd, key, where, default)
        if v is None or v < low:
            r.error(f"{where}.{key}", f"must be at least {low:g}s")
            return default
        if high is not None and v > high:
            r.error(f"{where}.{key}", f"must be at most {high:g}s")
            return default
        return v

    def level(dd: dict, key: str, where: str) -> str | None:
        v = dd.get(key)
        if v is None:
            return None
        if v not in levels:
            r.error(f"{where}.{key}", f"unknown level {show(v)} (levels: {', '.join(levels.names)})")
            return None
        return v

    default_lifetime = dur(d, "default_lifetime", w, dflt.default_lifetime, 60, MAX_TOKEN_LIFETIME)
    max_lifetime = dur(d, "max_lifetime", w, dflt.max_lifetime, 60, MAX_TOKEN_LIFETIME)
    if default_lifetime > max_lifetime:
        r.error(f"{w}.default_lifetime", "must not exceed tokens.max_lifetime")
    per_account: dict[str, str] = {}
    raw_levels = d.get("levels", {})
    if not isinstance(raw_levels, dict):
        r.error(f"{w}.levels", "must map account names to level names")
    else:
        for acct, lv in raw_levels.items():
            if not isinstance(acct, str) or not ACCOUNT_RE.match(acct):
                r.error(f"{w}.levels", f"not an account name: {show(acct)}")
            elif lv not in levels:
                r.error(f"{w}.levels.{acct}", f"unknown level {show(lv)}")
            else:
                per_account[acct] = lv
    j = r.mapping(d.get("jwt"), f"{w}.jwt", {"algorithm", "lifetime", "issuer", "audience", "hs512_secret_file"})
    alg = j.get("algorithm", "ES256")
    if alg not in ALGORITHMS:
        r.error(f"{w}.jwt.algorithm", f"must be one of {', '.join(ALGORITHMS)}, got {show(alg)}")
        alg = "ES256"
    secret_file = r.string(j, "hs512_secret_file", f"{w}.jwt", None)
    if alg == "HS512" and not secret_file:
        r.error(f"{w}.jwt", "algorithm HS512 needs hs512_secret_file (make one: forwardauth tokens jwt-secret -o FILE)")
    issuer = r.string(j, "issuer", f"{w}.jwt", None, re.compile(r"^https?://[^\s]{1,200}$"))
    jwt = JwtSettings(alg, dur(j, "lifetime", f"{w}.jwt", 600.0, 10, MAX_JWT_LIFETIME), issuer,
                      r.string(j, "audience", f"{w}.jwt", "forwardauth", _AUD_RE), secret_file)
    a = r.mapping(d.get("assertion"), f"{w}.assertion", {"enabled", "header", "lifetime"})
    assertion = AssertionSettings(r.boolean(a, "enabled", f"{w}.assertion", False),
                                  r.string(a, "header", f"{w}.assertion", "X-Auth-Request-Jwt", _HEADER_RE),
                                  dur(a, "lifetime", f"{w}.assertion", 60.0, 5, MAX_ASSERTION_LIFETIME))
    return TokensSettings(
        default_lifetime=default_lifetime,
        max_lifetime=max_lifetime,
        default_level=level(d, "default_level", w),
        levels=per_account,
        last_used_flush=dur(d, "last_used_flush", w, dflt.last_used_flush, 0.1),
        index_refresh=dur(d, "index_refresh", w, dflt.index_refresh, 0.5),
        stale_grace=dur(d, "stale_grace", w, dflt.stale_grace, 0),
        stale_sessions_up_to=level(d, "stale_sessions_up_to", w),
        jwt=jwt,
        assertion=assertion,
    )

