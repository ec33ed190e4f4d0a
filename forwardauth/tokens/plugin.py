"""Wires tokens into the server and the CLI (imported through `extensions`).

- `tokens:` config section (settings),
- bearer tokens on the decision endpoints (server.CREDENTIAL_HOOKS),
- the identity assertion header and the fail-closed answers once the state
  store has been unreachable for longer than `tokens.stale_grace`
  (server.ANSWER_HOOKS),
- `/.well-known/jwks.json` and the admin API under `/api/v1/` (APP_HOOKS),
- the token index, refreshed with the revocations by the context's one
  `Refresher`, and a background task for batched last-used writes,
- the `accounts`, `tokens` and `dbcreds` CLI groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from cachetools import LRUCache

from forwardauth import responses
from forwardauth.decision import Decision, Outcome
from forwardauth.durations import format_duration
from forwardauth.keyring import KeyRing
from forwardauth.request import OriginalRequest
from forwardauth.runtime import Runtime, resolve_path
from forwardauth.server import ANSWER_HOOKS, APP_HOOKS, CREDENTIAL_HOOKS, READY_CHECKS, Context
from forwardauth.session import Session
from forwardauth.tokens import settings as settings_mod
from forwardauth.tokens.bearer import TokenVerifier, bearer_token, looks_like_ours, principal
from forwardauth.tokens.index import TokenIndex, UsageRecorder
from forwardauth.tokens.jwt import JwtError, JwtSigner, load_hs512_secret

log = logging.getLogger("forwardauth.tokens")
STALE = "token: state store unreachable past the grace period"
KEY = "tokens"


@dataclass
class TokensState:
    index: TokenIndex = field(default_factory=TokenIndex)
    usage: UsageRecorder = field(default_factory=UsageRecorder)
    _verifier: TokenVerifier | None = None
    _signer: tuple[Runtime, JwtSigner] | None = None
    assertions: LRUCache = field(default_factory=lambda: LRUCache(maxsize=20000))
    tasks: list[asyncio.Task] = field(default_factory=list)

    def verifier(self, ring: KeyRing) -> TokenVerifier:
        v = self._verifier
        if v is None or v.ring is not ring:
            v = self._verifier = TokenVerifier(ring)
        return v

    def signer(self, runtime: Runtime) -> JwtSigner:
        """Built once per runtime (a reload may change keys or settings)."""
        if self._signer is not None and self._signer[0] is runtime:
            return self._signer[1]
        self._signer = (runtime, make_signer(runtime))
        self.assertions.clear()
        return self._signer[1]


def make_signer(runtime: Runtime) -> JwtSigner:
    cfg = runtime.config
    s = settings_mod.settings(cfg).jwt
    issuer = s.issuer or cfg.server.public_url
    if s.algorithm == "HS512":
        assert s.hs512_secret_file is not None
        return JwtSigner.hs512(load_hs512_secret(resolve_path(cfg, s.hs512_secret_file)), issuer)
    return JwtSigner.es256(runtime.keyring, issuer)


def state(ctx: Context) -> TokensState:
    return ctx.extensions[KEY]


def audit_fn(ctx: Context) -> Any:
    """Writes to the audit log of this app (ctx.extensions["audit"], set up by the
    sign-in part; made here from `local.audit` when that part did not)."""

    def emit(event: str, **fields: Any) -> None:
        audit = ctx.extensions.get("audit")
        if audit is None:
            from forwardauth.audit import AuditLog
            from forwardauth.signin.settings import settings as local_settings

            cfg = ctx.runtime.config
            target = local_settings(cfg).audit
            if target not in ("stdout", "stderr"):
                target = str(resolve_path(cfg, target))
            audit = ctx.extensions.setdefault("audit", AuditLog(target))
        audit.emit(event, **fields)

    return emit


# --- the decision endpoints --------------------------------------------------


def stale_for(ctx: Context, st: TokensState | None = None) -> float:
    """How long token decisions have gone without fresh state: the longer of
    the revocation snapshot's and the token index's time since their last good
    refresh (either loop failing, for any reason, counts)."""
    st = st or state(ctx)
    return max(ctx.revocations.unreachable_for(), st.index.unreachable_for())


def _credential(ctx: Context, request: web.Request, req: OriginalRequest, now: float) -> tuple[Session | None, str] | None:
    auth = request.headers.get("Authorization")
    if auth is None:
        return None
    cfg = ctx.runtime.config
    st = state(ctx)
    verifier = st.verifier(ctx.runtime.keyring)
    # A token accepted before: every per-request check again (record and
    # account unchanged, expiry and the other caveats, revocation), without
    # parsing, the signature memo and the principal rebuild.
    stale = stale_for(ctx, st) > settings_mod.settings(cfg).stale_grace
    if not stale:
        session = verifier.known(auth, req, st.index, ctx.revocations, now)
        if session is not None:
            st.usage.used(session.sid, now)
            return session, "ok"
    token = bearer_token(auth)
    if token is None:
        return (None, "token: malformed") if looks_like_ours(auth) else None
    if stale:
        return None, STALE
    session, why = principal(verifier, token, req, st.index, ctx.revocations, cfg.levels, now)
    if session is not None:
        st.usage.used(session.sid, now)
        verifier.remember(auth, token, session)
    return session, why


def _unavailable(ctx: Context, what: str) -> responses.Answer:
    down = stale_for(ctx)
    grace = settings_mod.settings(ctx.runtime.config).stale_grace
    since = "never reached" if down == float("inf") else f"unreachable for {format_duration(int(down))}"
    return responses.Answer(
        503, (("Retry-After", "5"),),
        f"503 Service Unavailable: the state store is {since} (grace {format_duration(grace)}); {what} refused\n")


def _answer(ctx: Context, request: web.Request, decision: Decision, req: OriginalRequest, ans: responses.Answer,
            reason: str, now: float) -> responses.Answer:
    cfg = ctx.runtime.config
    s = settings_mod.settings(cfg)
    if reason == STALE:
        return _unavailable(ctx, "bearer tokens are")
    session = decision.session
    if decision.allowed and session is not None and decision.required_level is not None:
        if ctx.revocations.unreachable_for() > s.stale_grace or (
                session.source == "token" and stale_for(ctx) > s.stale_grace):
            up_to = s.stale_sessions_up_to
            if session.source == "token" or up_to is None or not cfg.levels.at_least(up_to, decision.required_level):
                return _unavailable(ctx, f"sessions on routes needing level {decision.required_level} are")
    if decision.outcome is Outcome.UNAUTHENTICATED and reason.startswith("token:"):
        # RFC 6750: say what was wrong with the token (the reason names a
        # caveat or a check, never the token), in the challenge and the body.
        realm = cfg.server.realm
        why = reason.removeprefix("token:").strip()
        headers = tuple((k, v) for k, v in ans.headers if k != "WWW-Authenticate")
        ans = replace(ans, headers=headers + (
            ("WWW-Authenticate", f'Bearer realm="{realm}", error="invalid_token", error_description="{why}"'),))
        if ans.status == 401 and ans.content_type == "application/json":
            body = {"error": "invalid_token", "error_description": f"The bearer token was refused: {why}",
                    "required_level": decision.required_level}
            ans = replace(ans, body=json.dumps(body) + "\n")
    if s.assertion.enabled and decision.outcome is Outcome.ALLOW and session is not None:
        signed = _assertion(ctx, session, req.host, now)
        if signed is not None:
            value, renew_at = signed
            ans = replace(ans, headers=ans.headers + ((s.assertion.header, value),), until=min(ans.until, renew_at))
    return ans


def _assertion(ctx: Context, session: Session, host: str, now: float) -> tuple[str, float] | None:
    """A short-lived JWT for the app, audience = the requested host, and when to
    sign a new one. Cached for half its life per (session, host, level), so
    signing is rare on the hot path."""
    st = state(ctx)
    signer = st.signer(ctx.runtime)
    life = settings_mod.settings(ctx.runtime.config).assertion.lifetime
    key = (session.sid, session.sub, host, session.level)
    hit = st.assertions.get(key)
    if hit is not None and hit[1] > now:
        return hit
    claims = {"sub": session.sub, "level": session.level, "auth_time": int(session.auth_time), "src": session.source}
    if session.email:
        claims["email"] = session.email
    if session.name:
        claims["name"] = session.name
    if session.groups:
        claims["groups"] = list(session.groups)
    try:
        value = signer.sign(claims, audience=host, lifetime=min(life, max(1.0, session.exp - now)), now=now)
    except JwtError as exc:
        log.warning("identity assertion not added: %s", exc)
        return None
    st.assertions[key] = hit = (value, now + life / 2)
    return hit


# --- app wiring --------------------------------------------------------------


def _hook(app: web.Application, ctx: Context) -> None:
    ctx.extensions[KEY] = TokensState()
    from forwardauth.api import routes

    routes.install(app, ctx)

    def report(batch: dict[str, float]) -> None:
        emit = audit_fn(ctx)
        for token_id in batch:
            meta = state(ctx).index.token(token_id)
            emit("token_used", user=meta.account if meta else None,
                 reason=f"token {token_id}" + (f" ({meta.name})" if meta else ""))

    s = settings_mod.settings(ctx.runtime.config)
    ctx.refresher.add(lambda: state(ctx).index.refresh(ctx.store, s.index_refresh))

    async def start(app: web.Application) -> None:
        st = state(ctx)
        interval = settings_mod.settings(ctx.runtime.config).last_used_flush
        st.tasks = [asyncio.get_running_loop().create_task(st.usage.run(ctx.store, interval, report))]

    async def stop(app: web.Application) -> None:  # on_shutdown: the store is still open
        st = state(ctx)
        for t in st.tasks:
            t.cancel()
        for t in st.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await st.usage.flush(ctx.store, report)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


def _ready(ctx: Context) -> str | None:
    """Past the grace, /readyz says the store is down and what is refused because of it."""
    down = stale_for(ctx)
    grace = settings_mod.settings(ctx.runtime.config).stale_grace
    if down <= grace or down == float("inf"):
        return None
    error = ctx.revocations.last_error or state(ctx).index.last_error
    return (f"state store unreachable for {format_duration(int(down))} ({error}); "
            f"past tokens.stale_grace ({format_duration(grace)}) bearer tokens and revocation-sensitive "
            "routes are refused")


APP_HOOKS.append(_hook)
READY_CHECKS.append(_ready)
CREDENTIAL_HOOKS.append(_credential)
ANSWER_HOOKS.append(_answer)

from forwardauth.tokens import cli as _cli  # noqa: E402,F401  (registers the CLI groups)
