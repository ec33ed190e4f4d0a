"""The `local:` config section: local accounts, their factors, regulation and audit.

Without a `local:` section, password sign-in is off but the local factors
still work: a level that says `local_factor: totp` can be reached with a
TOTP code on top of any session (an upstream provider's included), and the
audit log goes to stdout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from forwardauth.core.config import Config, Reader
from forwardauth.core.errors import show
from forwardauth.core.levels import Level, Levels
from forwardauth.services.account_names import USERNAME_RE
from forwardauth.services.passwords import ScryptParams
from forwardauth.services.regulation import RegulationConfig
from forwardauth.state.records import AccountError, check_groups

LOCAL_FACTORS = ("totp",)
_ISSUER_RE = re.compile(r"^[^:\x00-\x1f\x7f]{1,64}$")  # ':' would break the otpauth label


@dataclass(frozen=True)
class TotpSettings:
    issuer: str = "forwardauth"  # the name authenticator apps show
    self_enrolment: bool = True  # a signed-in user may set up TOTP from the step-up page


@dataclass(frozen=True)
class BootstrapAdmin:
    username: str = "admin"
    groups: tuple[str, ...] = ("admins",)


@dataclass(frozen=True)
class LocalSettings:
    enabled: bool = False  # password sign-in with local accounts
    password_level: str | None = None  # None: the lowest level
    min_password_length: int = 10
    scrypt: ScryptParams = ScryptParams()
    totp: TotpSettings = TotpSettings()
    regulation: RegulationConfig = RegulationConfig()
    audit: str = "stdout"  # "stdout", "stderr" or a file path (relative to the config file)
    bootstrap_admin: BootstrapAdmin | None = None
    form_max_bytes: int = field(default=8192, repr=False)

    def password_level_of(self, levels: Levels) -> Level:
        return levels[self.password_level] if self.password_level else levels.items[0]


def settings(config: Config) -> LocalSettings:
    """The section, or the defaults (password sign-in off) when there is none."""
    return config.sections.get("local") or LocalSettings()


def totp_levels(levels: Levels) -> tuple[Level, ...]:
    return tuple(lv for lv in levels.items if lv.local_factor == "totp")


def parse(r: Reader, raw: Any, so_far: dict[str, Any]) -> LocalSettings:
    w = "local"
    d = r.mapping(raw, w, {"enabled", "password_level", "min_password_length", "scrypt", "totp", "regulation",
                           "audit", "bootstrap_admin"})
    levels: Levels = so_far["levels"]
    enabled = r.boolean(d, "enabled", w, True)
    plevel = r.string(d, "password_level", w, None)
    if plevel is not None and plevel not in levels:
        r.error(f"{w}.password_level", f"unknown level {show(plevel)} (levels: {', '.join(levels.names)})")
        plevel = None
    min_len = r.integer(d, "min_password_length", w, 10, 8, 256)

    sd = r.mapping(d.get("scrypt"), f"{w}.scrypt", {"log_n", "r", "p"})
    dflt = ScryptParams()
    log_n = r.integer(sd, "log_n", f"{w}.scrypt", dflt.log_n, 10, 22)
    sr = r.integer(sd, "r", f"{w}.scrypt", dflt.r, 1, 32)
    sp = r.integer(sd, "p", f"{w}.scrypt", dflt.p, 1, 16)

    td = r.mapping(d.get("totp"), f"{w}.totp", {"issuer", "self_enrolment"})
    issuer = r.string(td, "issuer", f"{w}.totp", "forwardauth", _ISSUER_RE)
    self_enrol = r.boolean(td, "self_enrolment", f"{w}.totp", True)

    rd = r.mapping(d.get("regulation"), f"{w}.regulation", {"max_failures", "max_client_failures", "window",
                                                              "ban_time"})
    rdef = RegulationConfig()
    reg = RegulationConfig(
        r.integer(rd, "max_failures", f"{w}.regulation", rdef.max_failures, 1, 1000),
        r.integer(rd, "max_client_failures", f"{w}.regulation", rdef.max_client_failures, 1, 100000),
        r.duration(rd, "window", f"{w}.regulation", rdef.window) or rdef.window,
        r.duration(rd, "ban_time", f"{w}.regulation", rdef.ban_time) or rdef.ban_time,
    )

    audit = r.string(d, "audit", w, "stdout")
    if not audit:
        r.error(f"{w}.audit", "must be stdout, stderr or a file path")
        audit = "stdout"

    boot = None
    if "bootstrap_admin" in d and d["bootstrap_admin"] is not False:
        bd = r.mapping(d["bootstrap_admin"] if d["bootstrap_admin"] is not True else {}, f"{w}.bootstrap_admin",
                       {"username", "groups"})
        user = r.string(bd, "username", f"{w}.bootstrap_admin", "admin")
        if not USERNAME_RE.match(user):
            r.error(f"{w}.bootstrap_admin.username", f"not a valid username: {show(user)}")
        groups: tuple[str, ...] = ("admins",)
        if "groups" in bd:
            try:
                groups = check_groups(bd["groups"] if isinstance(bd["groups"], (list, str)) else [bd["groups"]])
            except AccountError as exc:
                r.error(f"{w}.bootstrap_admin.groups", str(exc))
        boot = BootstrapAdmin(user, groups)

    for i, lv in enumerate(levels.items):
        if lv.local_factor is not None and lv.local_factor not in LOCAL_FACTORS:
            r.error(f"levels[{i}] ({lv.name}).local_factor",
                    f"unknown local factor {show(lv.local_factor)} (known: {', '.join(LOCAL_FACTORS)})")
    base = levels[plevel] if plevel else levels.items[0]
    for lv in totp_levels(levels):
        if lv.rank <= base.rank:
            r.error(f"levels ({lv.name}).local_factor",
                    f"a TOTP level must be above the password level {base.name!r}")
    return LocalSettings(enabled, plevel, min_len, ScryptParams(log_n, sr, sp), TotpSettings(issuer, self_enrol), reg,
                         audit, boot)

