"""What the WebAuthn pages and ceremonies share: the part of the current
runtime, the challenge cookies, request facts, the audit line, the freshness
rule for adding and removing keys, and the messages people see."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from forwardauth.core.config import SessionConfig
from forwardauth.core.cookies import clear_cookie, set_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.runtime import Runtime
from forwardauth.core.sealing import Sealer
from forwardauth.core.session import Session
from forwardauth.services.regulation import RegulationConfig, Regulator, Verdict, failure_store
from forwardauth.state.records import WebAuthnCredential
from forwardauth.web import bodies
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.forms import query
from forwardauth.web.oauth2_start import need_for, satisfied, start_url
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import Ceremony
from forwardauth.webauthn.service import WebAuthnService
from forwardauth.webauthn.settings import WebAuthnSettings
from forwardauth.webauthn.verify import Reason

SCRIPT_PATH = "/oauth2/static/webauthn.js"
MANAGE_PATH = "/oauth2/webauthn"
STEP_UP_PATH = "/oauth2/webauthn/step_up"
SIGN_IN_PATH = "/oauth2/webauthn/sign_in"
MAX_JSON = 60 * 1024  # an answer with an attestation certificate chain fits; the app caps bodies at 64 KiB


@dataclass
class Current:
    """What the handlers of one runtime use (rebuilt after a reload)."""

    settings: WebAuthnSettings
    service: WebAuthnService
    sealer: Sealer
    regulator: Regulator


@dataclass
class PartState:
    runtime: Runtime | None = None
    current: Current | None = None


WEBAUTHN = web.AppKey("webauthn", PartState)


def current(request: web.Request) -> Current | None:
    """The part for the current runtime; None without a `webauthn:` section."""
    ctx = request.app[CTX]
    st = request.app[WEBAUTHN]
    if st.runtime is not ctx.runtime:
        cfg = ctx.runtime.config
        settings = cfg.sections.get("webauthn")
        st.current = None
        if isinstance(settings, WebAuthnSettings):
            # Regulation: the same counters and limits as passwords and TOTP codes
            # (`local.regulation`): a failed key counts like any failed factor.
            reg = getattr(cfg.sections.get("local"), "regulation", None)
            st.current = Current(settings, WebAuthnService(settings, cfg.levels, ctx.store),
                                 Sealer(ctx.runtime.keyring, challenges.SEAL_PURPOSE),
                                 Regulator(failure_store(ctx.store),
                                           reg if isinstance(reg, RegulationConfig) else RegulationConfig()))
        st.runtime = ctx.runtime
    return st.current


# --- the challenge cookies: one per ceremony, host-only, Strict, for as long as the challenge ---


def _cookie_cfg(ctx: AppContext) -> SessionConfig:
    return replace(ctx.runtime.config.session, same_site="Strict", domain=None)


def cookie_name(cfg: SessionConfig, ceremony: Ceremony) -> str:
    """The session cookie's name with "-webauthn-<ceremony>"; with Secure cookies under __Host-."""
    base = cfg.cookie_name[:100]
    if cfg.secure and not base.startswith("__Host-"):
        base = "__Host-" + base.removeprefix("__Secure-")
    return f"{base}-webauthn-{ceremony.value}"


def challenge_cookie(ctx: AppContext, ceremony: Ceremony, token: str, max_age: float) -> str:
    cfg = _cookie_cfg(ctx)
    return set_cookie(cfg, cookie_name(cfg, ceremony), token, int(max_age))


def clear_challenge_cookie(ctx: AppContext, ceremony: Ceremony) -> str:
    cfg = _cookie_cfg(ctx)
    return clear_cookie(cfg, cookie_name(cfg, ceremony))


def sealed_challenge(request: web.Request, ctx: AppContext, ceremony: Ceremony) -> str:
    return request.cookies.get(cookie_name(_cookie_cfg(ctx), ceremony), "")


# --- request facts, the audit line -------------------------------------------------------




def safe_rd(ctx: AppContext, value: Any) -> str:
    s = ctx.runtime.config.server
    return safe_redirect(value if isinstance(value, str) else None, s.public_url, s.allowed_redirect_domains)


def target_level(ctx: AppContext, rd: str, asked: Any, session: Session | None) -> str:
    """The level `rd` needs (a `level` asked for may only raise it), as /oauth2/start computes it."""
    return need_for(ctx, rd, asked if isinstance(asked, str) else None, session).level


def next_url(ctx: AppContext, rd: str, level: str, session: Session, now: float) -> str:
    """rd when the new session is enough for it, else /oauth2/start for the next step."""
    need = need_for(ctx, rd, level or None, session)
    return rd if satisfied(ctx, need, now) else start_url(rd, need.level)


def manage_url(rd: str = "", level: str = "") -> str:
    return query(MANAGE_PATH, rd=rd, level=level) if rd or level else MANAGE_PATH


# --- adding and removing keys: a fresh enough session ---------------------------------------


def may_change(part: Current, ctx: AppContext, session: Session, has_credentials: bool,
               now: float) -> tuple[bool, str]:
    """(allowed, the level needed): the session proved that level within register_max_age."""
    levels = ctx.runtime.config.levels
    needed = part.settings.register_requirement(levels, has_credentials)
    ok = levels.at_least(session.level, needed) and session.proven_since(levels, needed,
                                                                         now - part.settings.register_max_age)
    return ok, needed


def usable(creds: list[WebAuthnCredential]) -> list[WebAuthnCredential]:
    return [c for c in creds if c.locked is None]


# --- what people read ---------------------------------------------------------------------

MSG_UNAVAILABLE = "Passkeys and security keys are not set up here."
MSG_SESSION_ENDED = "Your session has ended. Please sign in again."
MSG_CSRF = "This page has expired or was not sent from this site. Please reload it and try again."
MSG_EXPIRED = "This request has expired or was already used. Please try again."
MSG_STORE = "Your security key cannot be checked right now (forwardauth's state store cannot be reached). " \
            "Please try again in a minute."
MSG_FRESH = "To add or remove security keys and passkeys, sign in again first (it must be recent)."

MESSAGES: dict[Reason, tuple[int, str]] = {
    Reason.MALFORMED: (400, "The browser's answer could not be read. Please try again."),
    Reason.CHALLENGE_INVALID: (400, MSG_EXPIRED),
    Reason.CHALLENGE_USED: (400, MSG_EXPIRED),
    Reason.WRONG_CEREMONY: (400, "The browser's answer could not be read. Please try again."),
    Reason.CHALLENGE: (400, MSG_EXPIRED),
    Reason.ORIGIN: (401, "The security key answered for another site."),
    Reason.RP_ID: (401, "The security key answered for another site."),
    Reason.NOT_PRESENT: (401, "The security key was not touched. Please try again."),
    Reason.NOT_VERIFIED: (401, "Your security key did not verify you (PIN or fingerprint), and this page needs "
                               "that. Use a key that can, or a passkey."),
    Reason.ALGORITHM: (400, "This security key uses a kind of key that is not accepted here."),
    Reason.ATTESTATION: (403, "This security key is not one of the models accepted here."),
    Reason.AAGUID: (403, "This security key is not one of the models accepted here."),
    Reason.UNKNOWN_CREDENTIAL: (401, "This security key or passkey is not registered here (or it was removed)."),
    Reason.OTHER_USER: (403, "This security key or passkey belongs to another account."),
    Reason.USER_HANDLE: (401, "This passkey does not match its registration."),
    Reason.LOCKED: (403, "This security key or passkey is locked: it may have been copied. Ask an administrator."),
    Reason.BACKUP_ELIGIBILITY: (401, "This passkey does not match its registration."),
    Reason.SIGNATURE: (401, "The security key's signature is not valid."),
    Reason.COUNTER: (403, "This security key or passkey is now locked: its use counter went backwards, which "
                          "can mean it was copied. Ask an administrator."),
    Reason.NO_LEVEL: (403, "A security key or passkey cannot prove what this page needs."),
    Reason.DUPLICATE: (409, "This security key or passkey is already registered."),
    Reason.TOO_MANY: (409, "You have as many security keys and passkeys as allowed; remove one first."),
    Reason.NAME: (400, "A name is 1 to 64 printable characters."),
}


def banned_message(verdict: Verdict) -> str:
    m = verdict.minutes
    return f"Too many failed attempts. Try again in {m} minute{'s' if m != 1 else ''}."


def banned(verdict: Verdict) -> web.Response:
    """429 for a user or client the regulation holds back, with when to try again."""
    return json_error(429, banned_message(verdict), {"Retry-After": str(int(verdict.retry_after) + 1)})


def json_answer(data: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    for k, v in (headers or {}).items():
        resp.headers.add(k, v)
    return resp


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_answer({"error": message}, status, headers)


class JsonError(Exception):
    def __init__(self, status: int, message: str, reason: str):
        super().__init__(reason)
        self.status, self.message, self.reason = status, message, reason


MAX_JSON_DEPTH = 8  # the answer nests 4 deep: {credential: {clientExtensionResults: {credProps: {rk}}}}
_BODY_ANSWERS = {408: ("The request did not arrive in time. Please try again.", "body_timeout"),
                 413: ("The request is too large.", "oversized")}
_UNREADABLE = "The request could not be read."


async def read_json(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """A bounded JSON object of known fields (strings, except `credential`: an object). Raises JsonError.

    Read whole through web.bodies (a body in several packets is one body; its size,
    nesting and arrival time bounded; a key twice refused), then its shape checked here."""
    if request.content_type != "application/json":
        raise JsonError(415, "The request must be JSON.", "not_json")
    try:
        data = await bodies.read_json(request, MAX_JSON, MAX_JSON_DEPTH)
    except bodies.BodyError as exc:
        message, reason = _BODY_ANSWERS.get(exc.status, (_UNREADABLE, "malformed_json"))
        raise JsonError(exc.status, message, reason) from None
    if not isinstance(data, dict) or not set(data) <= allowed:
        raise JsonError(400, _UNREADABLE, "malformed_json")
    for k, v in data.items():
        if k == "credential":
            if not isinstance(v, dict):
                raise JsonError(400, _UNREADABLE, "malformed_json")
        elif not isinstance(v, str) or len(v) > 4096:
            raise JsonError(400, _UNREADABLE, "malformed_json")
    return data
