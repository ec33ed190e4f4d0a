"""The `webauthn:` config section: relying party, origins, policies and levels.

Every error names the file, `webauthn.<field>` and the offending value, like
the rest of the config. Defaults follow `server.public_url`: the RP ID is its
host and the only origin is its origin. Browsers refuse an IP address as an
RP ID (even 127.0.0.1, which is otherwise a secure context), so a public_url on
an IP needs a host name here, and every origin must sit on the RP ID or under
it, over https (or plain http on localhost, which browsers treat as secure).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from forwardauth.core.config import Reader, ServerConfig, show
from forwardauth.core.levels import Level, Levels

REQUIREMENTS = ("preferred", "required", "discouraged")
CONVEYANCES = ("none", "direct")
DEFAULT_TIMEOUT = 120.0
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_RP_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_KEYS = {"rp_id", "rp_name", "origins", "user_verification", "resident_keys", "attestation", "aaguids",
         "attestation_roots", "max_credentials", "level_user_verified", "level_presence", "timeout", "passwordless",
         "register_level", "register_max_age"}
DEFAULT_REGISTER_MAX_AGE = 600.0


@dataclass(frozen=True)
class WebAuthnSettings:
    rp_id: str
    origins: tuple[str, ...]  # serialised like a browser's clientData origin: scheme://host[:non-default port]
    level_user_verified: str  # what a proof with user verification (PIN, biometric) gives
    level_presence: str | None = None  # what a touch without user verification gives (None: nothing)
    rp_name: str = "forwardauth"
    user_verification: str = "preferred"
    resident_keys: str = "preferred"
    attestation: str = "none"
    aaguids: frozenset[str] = frozenset()  # canonical lower-case UUIDs; only with attestation: direct
    attestation_roots: tuple[bytes, ...] = ()  # DER certificates; only with attestation: direct
    max_credentials: int = 10
    timeout: float = DEFAULT_TIMEOUT  # how long a challenge may be answered
    passwordless: bool = True  # "Sign in with a passkey" on the sign-in page
    register_level: str | None = None  # None: the lowest level (any signed-in session may add a first key)
    register_max_age: float = DEFAULT_REGISTER_MAX_AGE  # how recently that level must have been proven

    def level_of(self, levels: Levels, user_verified: bool) -> Level | None:
        """The level a verified proof gives: the UV level, else the presence level (None: none)."""
        name = self.level_user_verified if user_verified else self.level_presence
        return levels.get(name) if name is not None else None

    def needs_user_verification(self, levels: Levels, target: str) -> bool:
        """Whether reaching `target` needs the UV flag: when a touch alone does not reach it."""
        if self.user_verification == "required":
            return True
        presence = self.level_of(levels, False)
        return presence is None or not levels.at_least(presence.name, target)

    def register_requirement(self, levels: Levels, has_credentials: bool) -> str:
        """The level a session must have proven (within register_max_age) to add or remove keys.

        The first key: `register_level` (like setting up TOTP, on top of the
        sign-in). Once the user has one, adding or removing needs at least what
        a key proves (level_presence, else level_user_verified), so a stolen
        password alone cannot add the thief's key or take the owner's away.
        """
        base = levels.get(self.register_level) if self.register_level else levels.items[0]
        assert base is not None
        if not has_credentials:
            return base.name
        proof = levels[self.level_presence or self.level_user_verified]
        return proof.name if proof.rank > base.rank else base.name

    def reaches(self, levels: Levels, target: str) -> bool:
        """Whether any WebAuthn proof reaches `target` (so the step-up page offers it)."""
        return levels.at_least(self.level_user_verified, target)


def origin_of(url: str) -> str | None:
    """The origin a browser would serialise for `url` (no default port, lower case), or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _choice(r: Reader, d: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    v = d.get(key, default)
    if v not in choices:
        r.error(f"webauthn.{key}", f"must be one of {', '.join(choices)}, got {show(v)}")
        return default
    return str(v)


def _level(r: Reader, d: dict, key: str, levels: Levels, required: bool) -> str | None:
    if key not in d or d[key] is None:
        if required:
            r.error(f"webauthn.{key}", f"is required: the level this proof gives (levels: {', '.join(levels.names)})")
        return None
    v = d[key]
    if v not in levels:
        r.error(f"webauthn.{key}", f"unknown level {show(v)} (levels: {', '.join(levels.names)})")
        return None
    return str(v)


def _rp_id(r: Reader, d: dict, server: ServerConfig) -> str | None:
    if "rp_id" not in d:
        host = (urlsplit(server.public_url).hostname or "").lower()
        if _is_ip(host):
            r.error("webauthn.rp_id", f"needed: server.public_url's host {host} is an IP address, which browsers "
                                      "refuse as a WebAuthn RP ID; give a host name (e.g. localhost) and serve "
                                      "forwardauth on it")
            return None
        return host
    v = d["rp_id"]
    if not isinstance(v, str) or _is_ip(v):
        r.error("webauthn.rp_id", f"must be a host name (browsers refuse IP addresses), got {show(v)}")
        return None
    if not _HOST_RE.match(v):
        r.error("webauthn.rp_id", f"must be a lower-case host name with no port or scheme, got {show(v)}")
        return None
    return v


def _origins(r: Reader, d: dict, server: ServerConfig, rp_id: str | None) -> tuple[str, ...]:
    given = r.str_list(d, "origins", "webauthn")
    if given is None and "origins" in d:
        return ()
    raw, where = (given, "webauthn.origins") if given is not None else ([server.public_url], "webauthn.origins")
    out: list[str] = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]" if given is not None else f"{where} (default: server.public_url)"
        origin = origin_of(item)
        if origin is None:
            r.error(w, f"must be an origin like https://auth.example.com (no path), got {show(item)}")
            continue
        host = (urlsplit(origin).hostname or "").lower()
        if origin.startswith("http:") and not _is_localhost(host) and not _is_ip(host):
            r.error(w, f"{origin} is plain http: browsers only offer WebAuthn over https (or on localhost)")
            continue
        if rp_id is not None and host != rp_id and not host.endswith("." + rp_id):
            r.error(w, f"host {host} is neither the RP ID {rp_id} nor under it (browsers refuse the ceremony)")
            continue
        if origin not in out:
            out.append(origin)
    return tuple(out)


def _aaguids(r: Reader, d: dict) -> frozenset[str]:
    items = r.str_list(d, "aaguids", "webauthn") or []
    out = set()
    for i, item in enumerate(items):
        try:
            out.add(str(uuid.UUID(item)))
        except ValueError:
            r.error(f"webauthn.aaguids[{i}]", f"not an AAGUID (a UUID like cb69481e-8ff7-4039-93ec-0a2729a154a8), "
                                              f"got {show(item)}")
    return frozenset(out)


def _roots(r: Reader, d: dict) -> tuple[bytes, ...]:
    """Root certificates (PEM files, relative to the config file) the attestation must chain to."""
    out: list[bytes] = []
    for i, item in enumerate(r.str_list(d, "attestation_roots", "webauthn") or []):
        w = f"webauthn.attestation_roots[{i}]"
        path = Path(item) if Path(item).is_absolute() else Path(r.file).parent / item
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            r.error(w, f"cannot read {path}: {exc.strerror or exc}")
            continue
        except ValueError:
            r.error(w, f"{path} holds no PEM certificate")
            continue
        out.extend(c.public_bytes(Encoding.DER) for c in certs)
    return tuple(out)


def parse(r: Reader, raw: Any, so_far: dict[str, Any]) -> WebAuthnSettings | None:
    """The section parser: `so_far` holds the parsed `server` and `levels`."""
    before = len(r.problems)
    d = r.mapping(raw, "webauthn", _KEYS)
    server: ServerConfig = so_far["server"]
    levels: Levels = so_far["levels"]
    rp_id = _rp_id(r, d, server)
    origins = _origins(r, d, server, rp_id)
    rp_name = r.string(d, "rp_name", "webauthn", "forwardauth", _RP_NAME_RE)
    uv = _choice(r, d, "user_verification", REQUIREMENTS, "preferred")
    rk = _choice(r, d, "resident_keys", REQUIREMENTS, "preferred")
    attestation = _choice(r, d, "attestation", CONVEYANCES, "none")
    aaguids, roots = _aaguids(r, d), _roots(r, d)
    if attestation == "direct":
        if "aaguids" not in d:
            r.error("webauthn.aaguids", "is required with attestation: direct (the authenticator models allowed)")
        if "attestation_roots" not in d:
            r.error("webauthn.attestation_roots", "is required with attestation: direct (PEM files of the roots "
                                                  "the authenticators' attestation must chain to)")
    else:
        for key in ("aaguids", "attestation_roots"):
            if key in d:
                r.error(f"webauthn.{key}", "only applies with attestation: direct")
    max_creds = r.integer(d, "max_credentials", "webauthn", 10, 1, 100)
    timeout = r.duration(d, "timeout", "webauthn", DEFAULT_TIMEOUT)
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    elif not 10 <= timeout <= 600:
        r.error("webauthn.timeout", f"must be from 10s to 10m, got {show(d.get('timeout'))}")
        timeout = DEFAULT_TIMEOUT
    passwordless = r.boolean(d, "passwordless", "webauthn", True)
    register_level = _level(r, d, "register_level", levels, required=False)
    reg_age = r.duration(d, "register_max_age", "webauthn", DEFAULT_REGISTER_MAX_AGE)
    if reg_age is None:
        reg_age = DEFAULT_REGISTER_MAX_AGE
    elif not 60 <= reg_age <= 86400:
        r.error("webauthn.register_max_age", f"must be from 1m to 24h, got {show(d.get('register_max_age'))}")
        reg_age = DEFAULT_REGISTER_MAX_AGE
    lv_uv = _level(r, d, "level_user_verified", levels, required=True)
    lv_up = _level(r, d, "level_presence", levels, required=False)
    if lv_uv is not None and lv_up is not None and levels[lv_up].rank > levels[lv_uv].rank:
        r.error("webauthn.level_presence", f"{lv_up!r} is above level_user_verified {lv_uv!r}: a touch without "
                                           "PIN or biometric cannot prove more than one with it")
    if lv_up is not None and uv == "required":
        r.warning("webauthn.level_presence", "never given: user_verification is required")
    if passwordless and rk == "discouraged":
        r.warning("webauthn.passwordless", "needs discoverable credentials, which resident_keys: discouraged "
                                           "does not ask for")
    if len(r.problems) > before or rp_id is None or lv_uv is None:
        return None
    return WebAuthnSettings(rp_id, origins, lv_uv, lv_up, rp_name, uv, rk, attestation, aaguids, roots, max_creds,
                            timeout, passwordless, register_level, reg_age)
