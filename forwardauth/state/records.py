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
- `WebAuthnCredential`: a passkey or security key (its public key, counter,
  flags); `counter_advances` is the signature counter rule every backend applies.
- `Device`, `Pairing`, `ApprovalRequest`: approving devices (never their
  credential: `secret_hash` only), pending pairing codes (kept under the
  code's hash), and approval requests with the phrase their browser shows.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from forwardauth.core import jsonstrict

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


# --- WebAuthn credentials ---------------------------------------------------------

WEBAUTHN_NAME_MAX = 64
WEBAUTHN_TRANSPORTS = frozenset({"usb", "nfc", "ble", "smart-card", "hybrid", "internal"})
_WEBAUTHN_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class WebAuthnError(ValueError):
    """A refused credential write; the message is for the user and names no key material."""


class TooManyCredentials(WebAuthnError):
    pass


class DuplicateCredential(WebAuthnError):
    pass


DUPLICATE_MESSAGE = "This security key or passkey is already registered."


def too_many_message(limit: int) -> str:
    return f"You already have {limit} security keys and passkeys; remove one first."


def check_credential_name(name: Any) -> str:
    """A credential's display name, trimmed; raises WebAuthnError naming the problem."""
    name = name.strip() if isinstance(name, str) else ""
    if not _WEBAUTHN_NAME_RE.match(name):
        raise WebAuthnError(f"A name is 1 to {WEBAUTHN_NAME_MAX} printable characters.")
    return name


def counter_advances(stored: int, new: int) -> bool:
    """WebAuthn's signature counter rule (Level 3, 7.2 step 22), for every backend.

    Authenticators that keep no counter (most passkeys) always send 0: 0 after
    0 is fine. Otherwise the counter must go strictly up; anything else means
    two copies of the key may exist (a clone), or a replayed assertion.
    """
    if new == 0 and stored == 0:
        return True
    return new > stored


class Advance(enum.Enum):
    """What recording a verified use of a credential did."""

    ADVANCED = "advanced"  # counter stored, last use recorded
    REGRESSED = "regressed"  # the counter did not move forward: the credential is now locked
    LOCKED = "locked"  # it was locked already: nothing changed
    GONE = "gone"  # removed meanwhile


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def webauthn_fingerprint(credential_id: bytes) -> str:
    """A short, stable label of a credential for logs and audit lines (not the id itself)."""
    return hashlib.sha256(b"webauthn-credential:" + credential_id).hexdigest()[:16]


@dataclass(frozen=True)
class WebAuthnCredential:
    """A passkey or security key registered to one user (no secret: a public key)."""

    id: bytes  # the credential id chosen by the authenticator
    user: str  # the forwardauth user it belongs to
    user_handle: bytes  # the WebAuthn user.id given at registration: random, never the user name
    public_key: bytes  # the COSE key, CBOR-encoded as the authenticator sent it
    sign_count: int
    name: str
    created: float
    transports: tuple[str, ...] = ()
    aaguid: str = "00000000-0000-0000-0000-000000000000"
    backup_eligible: bool = False  # BE: may be synced to other devices (a multi-device passkey)
    backed_up: bool = False  # BS: is synced now (updated on every use)
    user_verifying: bool = False  # UV seen at registration or since: the authenticator verifies its user
    discoverable: bool | None = None  # a resident key (credProps.rk); None: the browser did not say
    last_used: float | None = None
    locked: str | None = None  # why it no longer works (a counter that went backwards); None: usable

    @property
    def key(self) -> str:
        """The id as text (base64url), as browsers, pages and the CLI spell it."""
        return _b64e(self.id)

    def to_record(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(v=1, id=self.key, user_handle=_b64e(self.user_handle), public_key=_b64e(self.public_key),
                 transports=list(self.transports))
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> WebAuthnCredential:
        """Strict inverse of `to_record`: raises ValueError on anything odd."""
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("bad credential record version")
        if isinstance(d.get("sign_count"), bool) or not isinstance(d.get("sign_count"), int) or d["sign_count"] < 0:
            raise ValueError("bad credential record: sign_count")
        try:
            return cls(
                id=_b64d(d["id"]), user=str(d["user"]), user_handle=_b64d(d["user_handle"]),
                public_key=_b64d(d["public_key"]), sign_count=int(d["sign_count"]), name=str(d["name"]),
                created=float(d["created"]), transports=tuple(str(t) for t in d["transports"]),
                aaguid=str(d["aaguid"]), backup_eligible=bool(d["backup_eligible"]),
                backed_up=bool(d["backed_up"]), user_verifying=bool(d["user_verifying"]),
                discoverable=None if d.get("discoverable") is None else bool(d["discoverable"]),
                last_used=None if d.get("last_used") is None else float(d["last_used"]),
                locked=None if d.get("locked") is None else str(d["locked"]),
            )
        except (KeyError, TypeError, OverflowError) as exc:
            raise ValueError(f"bad credential record: {exc.__class__.__name__}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_record(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WebAuthnCredential:
        """Read strictly (core.jsonstrict: a key twice, NaN or deep nesting is a ValueError too)."""
        return cls.from_record(jsonstrict.loads(text, max_depth=2))

    def used(self, sign_count: int, backed_up: bool, user_verified: bool, now: float) -> WebAuthnCredential:
        """After a verified use whose counter advanced."""
        return replace(self, sign_count=sign_count, backed_up=backed_up, last_used=now,
                       user_verifying=self.user_verifying or user_verified)

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
