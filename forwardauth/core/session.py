"""Sessions: who the user is, the level reached, and when each level was proven.

A session lives only in its sealed cookie (stateless, so any replica can
answer); the state store only knows what was revoked. Sealing and opening
the cookie is `credentials.SessionCodec`'s job; this module is the record.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from forwardauth.core.levels import Levels

MAX_FIELD = 1024  # characters of sub, email, name, each group
MAX_GROUPS = 256
_MAX_FIELD, _MAX_GROUPS = MAX_FIELD, MAX_GROUPS


@dataclass(frozen=True)
class Session:
    sid: str
    sub: str
    level: str
    proofs: Mapping[str, float]  # level name -> unix time it was last proven
    iat: float  # issued: compared with the user's revocation epoch
    exp: float  # absolute end of life
    seen: float  # last refresh, for the idle timeout
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    source: str = "local"  # which authenticator made it: oidc, local, cli
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. id_token hint data

    @property
    def auth_time(self) -> float:
        return max(self.proofs.values(), default=self.iat)

    def last_proven(self, levels: Levels, required: str) -> float | None:
        """When `required` or a higher level was last proven (None: never)."""
        times = [t for lv in levels.and_above(required) if (t := self.proofs.get(lv.name)) is not None]
        return max(times, default=None)

    def proven_since(self, levels: Levels, required: str, since: float) -> bool:
        """True when `required` or a higher level was proven at or after `since`."""
        last = self.last_proven(levels, required)
        return last is not None and last >= since

    def to_json(self) -> bytes:
        d = {
            "v": 1,
            "sid": self.sid,
            "sub": self.sub,
            "lvl": self.level,
            "prf": dict(self.proofs),
            "iat": self.iat,
            "exp": self.exp,
            "see": self.seen,
            "src": self.source,
        }
        if self.email is not None:
            d["em"] = self.email
        if self.name is not None:
            d["nm"] = self.name
        if self.groups:
            d["grp"] = list(self.groups)
        if self.extra:
            d["x"] = dict(self.extra)
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Session:
        """Strict: every field is type-checked; anything odd raises ValueError."""
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("bad session version")

        def s(key: str, optional: bool = False) -> str | None:
            v = d.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, str) or len(v) > _MAX_FIELD:
                raise ValueError(f"bad session field {key}")
            return v

        def t(key: str) -> float:
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"bad session field {key}")
            return float(v)

        prf = d.get("prf")
        if not isinstance(prf, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in prf.items()
        ):
            raise ValueError("bad session field prf")
        grp = d.get("grp", [])
        if (
            not isinstance(grp, list)
            or len(grp) > _MAX_GROUPS
            or not all(isinstance(g, str) and len(g) <= _MAX_FIELD for g in grp)
        ):
            raise ValueError("bad session field grp")
        extra = d.get("x", {})
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("bad session field x")
        return cls(
            sid=s("sid"),  # type: ignore[arg-type]
            sub=s("sub"),  # type: ignore[arg-type]
            level=s("lvl"),  # type: ignore[arg-type]
            proofs={k: float(v) for k, v in prf.items()},
            iat=t("iat"),
            exp=t("exp"),
            seen=t("see"),
            email=s("em", True),
            name=s("nm", True),
            groups=tuple(grp),
            source=s("src"),  # type: ignore[arg-type]
            extra=extra,
        )


def new_session_id() -> str:
    return secrets.token_urlsafe(16)
