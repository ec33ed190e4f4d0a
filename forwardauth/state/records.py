"""The records every state store holds: plain frozen values, one serialised
form each. The store protocols that keep them are in `forwardauth.state.base`.

- `RevocationSnapshot`: epochs and revoked ids, what the hot path checks.
- `Account`: a local account (validated on construction). Secrets are never
  held in clear: `password_hash` is an scrypt record (see `passwords`),
  `totp_secret_enc` the TOTP seed sealed under the key ring (see `totp`);
  `repr()` hides both.
- `TokenMeta`: what an API token was issued with (never the token itself, so
  a copy of the store cannot authenticate).
- `SealedCreds`: a service account's database credentials, sealed.
- `Device`, `Pairing`, `ApprovalRequest`: approving devices (never their
  credential: `secret_hash` only), pending pairing codes (kept under the
  code's hash), and approval requests with the phrase their browser shows.
"""

from __future__ import annotations

import enum
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# --- revocations ------------------------------------------------------------------


@dataclass(frozen=True)
class RevocationSnapshot:
    version: int
    epochs: dict[str, float] = field(default_factory=dict)  # user -> sessions issued before are dead
    revoked: dict[str, float] = field(default_factory=dict)  # session/token id -> keep until


# --- accounts ---------------------------------------------------------------------

KINDS = ("human", "system")  # system accounts never sign in with a password
STATUSES = ("active", "locked")

GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,63}$")
MAX_KEY = 256  # any stored account name, including "source:sub" ones
MAX_FIELD = 256  # display name, email
MAX_GROUPS = 64


class AccountError(ValueError):
    """An invalid account value. The message names the field, never a secret."""


def check_groups(groups: Any) -> tuple[str, ...]:
    """Validated, de-duplicated, order kept."""
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    out: list[str] = []
    for g in groups:
        if not isinstance(g, str) or not GROUP_RE.match(g):
            raise AccountError(f"invalid group name {g!r}: 1-64 of A-Z a-z 0-9 _ . : @ + -")
        if g not in out:
            out.append(g)
    if len(out) > MAX_GROUPS:
        raise AccountError(f"at most {MAX_GROUPS} groups")
    return tuple(out)


@dataclass(frozen=True)
class Account:
    username: str
    kind: str = "human"
    display_name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    status: str = "active"
    password_hash: str | None = field(default=None, repr=False)
    totp_secret_enc: str | None = field(default=None, repr=False)
    totp_last_step: int = 0
    created: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not 0 < len(self.username) <= MAX_KEY:
            raise AccountError("username must be 1-256 characters")
        if self.kind not in KINDS:
            raise AccountError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise AccountError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        for name in ("display_name", "email"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or len(v) > MAX_FIELD or _has_ctl(v)):
                raise AccountError(f"{name} must be at most {MAX_FIELD} printable characters")
        object.__setattr__(self, "groups", check_groups(self.groups))
        if self.kind == "system" and self.password_hash is not None:
            raise AccountError("system accounts cannot have a password")

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def can_use_password(self) -> bool:
        """Human, active and with a password set: the only accounts a password signs in."""
        return self.kind == "human" and self.active and self.password_hash is not None

    @property
    def has_totp(self) -> bool:
        return self.totp_secret_enc is not None

    def changed(self, now: float | None = None, **changes: Any) -> Account:
        """A copy with `changes` applied and `updated` set (validation runs again)."""
        return replace(self, updated=time.time() if now is None else now, **changes)

    # --- records: the one serialised form every backend stores -------------

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (for Redis, exports). Includes the sealed secrets."""
        return {
            "v": 1,
            "username": self.username,
            "kind": self.kind,
            "display_name": self.display_name,
            "email": self.email,
            "groups": list(self.groups),
            "status": self.status,
            "password_hash": self.password_hash,
            "totp_secret_enc": self.totp_secret_enc,
            "totp_last_step": self.totp_last_step,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Account:
        """Strict inverse of `to_record`. Raises AccountError on anything odd."""
        if not isinstance(d, dict) or d.get("v") != 1:
            raise AccountError("bad account record version")
        try:
            return cls(
                username=d["username"],
                kind=d["kind"],
                display_name=d.get("display_name"),
                email=d.get("email"),
                groups=tuple(d.get("groups") or ()),
                status=d["status"],
                password_hash=d.get("password_hash"),
                totp_secret_enc=d.get("totp_secret_enc"),
                totp_last_step=int(d.get("totp_last_step") or 0),
                created=float(d.get("created") or 0.0),
                updated=float(d.get("updated") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AccountError):
                raise
            raise AccountError(f"bad account record: {exc.__class__.__name__}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_record(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Account:
        try:
            return cls.from_record(json.loads(text))
        except ValueError as exc:
            if isinstance(exc, AccountError):
                raise
            raise AccountError("bad account record: not JSON") from None


def _has_ctl(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


# --- tokens and database credentials ----------------------------------------------


@dataclass(frozen=True)
class TokenMeta:
    id: str
    account: str
    name: str
    key_id: str
    level: str
    created: float
    expires: float
    created_by: str
    last_used: float | None = None
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> TokenMeta:
        """Strict: raises ValueError on anything odd."""
        try:
            out = cls(
                id=str(d["id"]), account=str(d["account"]), name=str(d["name"]), key_id=str(d["key_id"]),
                level=str(d["level"]), created=float(d["created"]), expires=float(d["expires"]),
                created_by=str(d["created_by"]),
                last_used=None if d.get("last_used") is None else float(d["last_used"]),
                revoked=None if d.get("revoked") is None else float(d["revoked"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad token record: {exc.__class__.__name__}") from None
        return out


@dataclass(frozen=True)
class SealedCreds:
    sealed: str
    updated: float
    updated_by: str


# --- approving devices ----------------------------------------------------------


@dataclass(frozen=True)
class Device:
    id: str
    user: str
    name: str
    created: float
    secret_hash: str  # SHA-256 of the credential's secret, never the credential
    last_seen: float | None = None

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, user={self.user!r}, name={self.name!r}, created={self.created!r})"


@dataclass(frozen=True)
class Pairing:
    """A pairing code waiting to be exchanged (stored under its hash)."""

    user: str
    created: float
    expires: float


class ApprovalState(str, enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"  # on the device, or by a wrong phrase (`reason` says which)
    CANCELLED = "cancelled"  # by the browser that asked
    EXPIRED = "expired"


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    user: str
    host: str  # the site that asked (the original request's host)
    path: str  # and its path, without the query
    client: str | None  # the browser's address
    user_agent: str
    level: str  # the level the approval will prove
    created: float
    expires: float
    phrase: str  # the one the browser shows; never logged, never sent to a device alone
    choices: tuple[str, ...]  # what every device shows, in this order
    state: ApprovalState = ApprovalState.PENDING
    reason: str | None = None  # e.g. "wrong_phrase", "denied_on_device"
    decided: float | None = None
    device_id: str | None = None  # the device that decided

    def __repr__(self) -> str:  # without the phrase
        return f"ApprovalRequest(id={self.id!r}, user={self.user!r}, state={self.state.value!r})"

    def live(self, now: float) -> bool:
        """Pending and not expired: what a device is shown."""
        return self.state is ApprovalState.PENDING and now < self.expires

    def outcome(self, now: float) -> ApprovalState:
        """The state as the browser should see it (a pending request past its
        expiry is expired, whether or not anyone wrote that down yet)."""
        if self.state is ApprovalState.PENDING and now >= self.expires:
            return ApprovalState.EXPIRED
        return self.state

    # The fields fixed at creation, as one JSON text (Redis keeps the state
    # fields beside it, so a resolution writes only those).
    FIXED = ("id", "user", "host", "path", "client", "user_agent", "level", "created", "expires", "phrase", "choices")

    def fixed_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.FIXED}, separators=(",", ":"))

    @classmethod
    def from_parts(cls, fixed: str, state: str, reason: str | None, decided: float | str | None,
                   device_id: str | None) -> ApprovalRequest:
        d = json.loads(fixed)
        d["choices"] = tuple(d["choices"])
        return cls(**d, state=ApprovalState(state), reason=reason or None,
                   decided=float(decided) if decided not in (None, "") else None, device_id=device_id or None)
