"""The `oidc:` config section."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwardauth.core.config import Reader
from forwardauth.core.shown import show

MAX_LOGIN_TIMEOUT = 3600.0
ALLOWED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str = "groups"
    extra_auth_params: tuple[tuple[str, str], ...] = ()
    id_token_algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    essential_acr: bool = True
    login_timeout: float = 600.0
    http_timeout: float = 5.0
    clock_skew: float = 60.0


def parse(r: Reader, raw: Any, so_far: dict[str, Any]) -> OidcConfig | None:
    w = "oidc"
    d = r.mapping(raw, w, {"issuer", "client_id", "client_secret", "client_secret_file", "scopes", "groups_claim",
                           "extra_auth_params", "id_token_algorithms", "essential_acr", "login_timeout",
                           "http_timeout", "clock_skew"})
    issuer = r.string(d, "issuer", w, None)
    if not issuer or not re.match(r"^https?://[^\s?#@]+$", issuer):
        r.error(f"{w}.issuer", f"must be the provider's http(s) issuer URL, got {show(issuer)}")
    client_id = r.string(d, "client_id", w, None)
    if not client_id:
        r.error(f"{w}.client_id", "is required")
    secret = r.string(d, "client_secret", w, None)
    secret_file = r.string(d, "client_secret_file", w, None)
    if bool(secret) == bool(secret_file):
        r.error(w, "give exactly one of client_secret or client_secret_file")
    elif secret_file:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            r.error(f"{w}.client_secret_file", f"cannot read {secret_file}: {exc.strerror}")
    scopes = r.str_list(d, "scopes", w) or ["openid", "email", "profile"]
    if "openid" not in scopes:
        r.error(f"{w}.scopes", "must include openid")
    algs = r.str_list(d, "id_token_algorithms", w) or ["RS256", "ES256", "EdDSA"]
    for i, a in enumerate(algs):
        if a not in ALLOWED_ALGS:
            r.error(f"{w}.id_token_algorithms[{i}]", f"{show(a)} is not allowed (allowed: {', '.join(ALLOWED_ALGS)})")
    extra = d.get("extra_auth_params", {}) or {}
    reserved = {"state", "nonce", "code_challenge", "code_challenge_method", "redirect_uri", "client_id",
                "response_type", "scope", "acr_values", "max_age", "prompt", "login_hint", "claims",
                "response_mode", "request", "request_uri"}
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        r.error(f"{w}.extra_auth_params", "must map parameter names to strings")
        extra = {}
    for k in extra:
        if k in reserved:
            r.error(f"{w}.extra_auth_params.{k}", "is set by forwardauth and cannot be overridden")
    login_timeout = r.duration(d, "login_timeout", w, 600.0) or 600.0
    if login_timeout > MAX_LOGIN_TIMEOUT:
        # Answered states are remembered (single use) for this long.
        r.error(f"{w}.login_timeout", f"must be at most 1h, got {login_timeout:g}s")
    return OidcConfig(
        issuer=issuer or "",
        client_id=client_id or "",
        client_secret=secret or "",
        scopes=tuple(scopes),
        groups_claim=r.string(d, "groups_claim", w, "groups"),
        extra_auth_params=tuple(sorted(extra.items())),
        id_token_algorithms=tuple(algs),
        essential_acr=r.boolean(d, "essential_acr", w, True),
        login_timeout=login_timeout,
        http_timeout=r.duration(d, "http_timeout", w, 5.0) or 5.0,
        clock_skew=r.duration(d, "clock_skew", w, 60.0) or 0.0,
    )

