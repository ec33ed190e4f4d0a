"""The aiohttp adapter: proxy subrequest in, core decision, proxy answer out.

Handlers here only translate; the deciding happens in `decision`. The hot
path (cookie present, allow) opens the cookie, checks the in-memory
revocation snapshot, matches the policy and answers: no disk, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from forwardauth import request as reqmod
from forwardauth import responses
from forwardauth.config import load_config
from forwardauth.cookies import cookie_value, set_cookie
from forwardauth.decision import Decision, Outcome, decide
from forwardauth.errors import ConfigError
from forwardauth.logs import Throttle
from forwardauth.memo import Memo
from forwardauth.metrics import DECISIONS, metrics_handler
from forwardauth.revocation import Revocations
from forwardauth.runtime import Runtime, resolve_state_url
from forwardauth.session import Session
from forwardauth.state import StateStore, open_store
from forwardauth.state.refresh import Refresher

log = logging.getLogger("forwardauth")


@dataclass
class Context:
    """What every handler shares. `runtime` is swapped whole on reload."""

    runtime: Runtime
    store: StateStore
    revocations: Revocations = field(default_factory=Revocations)
    extensions: dict[str, Any] = field(default_factory=dict)
    refresher: Refresher = field(default_factory=Refresher)  # every snapshot of the store, revocations first

    def __post_init__(self) -> None:
        self.refresher.add(lambda: self.revocations.refresh(self.store))

    def reload(self) -> bool:
        path = self.runtime.config.path
        try:
            rt = Runtime.build(load_config(path))
        except ConfigError as exc:
            log.error("reload refused; the running configuration is kept", extra={"fields": {"problems": exc.problems}})
            return False
        if rt.config.state != self.runtime.config.state:
            log.warning("state URL changes need a restart; keeping the current store")
        self.runtime = rt
        log.info("configuration reloaded", extra={"fields": {"rules": len(rt.config.policy.rules)}})
        return True


CTX = web.AppKey("ctx", Context)

# Later parts (sign-in pages, tokens, ...) add routes with hooks here:
# hook(app, ctx) is called once when the app is built.
APP_HOOKS: list[Callable[[web.Application, Context], None]] = []

# Credentials other than the session cookie (bearer tokens, ...):
# hook(ctx, request, req, now) returns None when the request carries no
# credential of its kind, else (session or None, reason). The first hook that
# answers wins and the cookie is then not consulted. Hooks must not do I/O.
CREDENTIAL_HOOKS: list[
    Callable[[Context, web.Request, reqmod.OriginalRequest, float], tuple[Session | None, str] | None]
] = []
# After the decision: hook(ctx, request, decision, req, answer, reason, now)
# returns the answer to send (the same one, one with headers added, or a
# replacement). Not called when the answer comes from the memo (memo.py),
# which is used only for a credential outcome of "ok" or "absent" and while
# the revocation store answers: a hook may change an allow on other grounds
# (e.g. tokens' 503s past tokens.stale_grace) but only on those, or by
# shortening the answer's `until`.
ANSWER_HOOKS: list[
    Callable[[Context, web.Request, Decision, reqmod.OriginalRequest, responses.Answer, str, float],
             responses.Answer]
] = []


def peer_address(request: web.Request) -> reqmod.IPAddress | None:
    try:
        return reqmod.parse_ip(request.remote or "")
    except ValueError:
        return None


def current_session(ctx: Context, cookies: Any, now: float) -> tuple[Session | None, str, bool]:
    """(session, reason, refresh due) from the request's cookies, revocation applied."""
    return session_of(ctx, cookies.get(ctx.runtime.config.session.cookie_name), now)


def session_of(ctx: Context, value: str | None, now: float) -> tuple[Session | None, str, bool]:
    """(session, reason, refresh due) from a session cookie's value, revocation applied."""
    opened = ctx.runtime.codec.open(value, now)
    s = opened.session
    if s is not None and ctx.revocations.is_revoked(s.sub, s.sid, s.iat):
        return None, "revoked", False
    return s, opened.reason, opened.refresh


def session_cookie(ctx: Context, session: Session, now: float) -> str:
    rt = ctx.runtime
    value = rt.codec.seal(session)
    return set_cookie(rt.config.session, rt.config.session.cookie_name, value, int(session.exp - now))


def _respond(ans: responses.Answer) -> web.Response:
    if not ans.body:  # nothing to describe: no Content-Type (one header less on every allow)
        return web.Response(status=ans.status, headers=ans.headers)
    return web.Response(status=ans.status, text=ans.body, content_type=ans.content_type.split(";")[0],
                        headers=ans.headers)


UNTRUSTED, BAD_REQUEST, AMBIGUOUS = "untrusted_peer", "bad_request", "ambiguous_path"
_REFUSALS = Throttle(per_interval=10, interval=1.0)
NOT_READ_YET = responses.Answer(
    503, (("Retry-After", "5"),),
    "503 Service Unavailable: the state store has not been read yet, so revoked sessions cannot be told "
    "apart; signed-in requests are refused until it has\n")


def _handler(ctx: Context, convention: reqmod.Convention, endpoint: str, redirects: bool):
    # Counter children bound once: labels() per request is a locked dict lookup.
    counters = {o: DECISIONS.labels(endpoint, o.value) for o in Outcome}
    counters.update({k: DECISIONS.labels(endpoint, k) for k in (UNTRUSTED, BAD_REQUEST, AMBIGUOUS)})
    via_nginx = convention is reqmod.NGINX
    memos: list[Memo] = []  # this endpoint's memo for the current runtime (see memo.py)

    async def handle(request: web.Request) -> web.Response:
        rt = ctx.runtime
        cfg = rt.config
        remote = request.remote
        trusted = rt.trusted
        peer = trusted.peer(remote)
        if peer is None:
            counters[UNTRUSTED].inc()
            return web.Response(status=403, text=f"403 Forbidden: {peer_address(request)} is not in "
                                                 "server.trusted_proxies\n")
        if not memos or memos[0].runtime is not rt:
            memos[:] = [Memo(rt)]
        memo = memos[0]
        values = convention.values(request.headers)
        key = (remote, values)
        try:
            req = memo.request(key, convention.parse, values, peer, trusted)
        except reqmod.BadRequest as exc:
            ambiguous = isinstance(exc, reqmod.AmbiguousPath)
            counters[AMBIGUOUS if ambiguous else BAD_REQUEST].inc()
            _log_refusal(endpoint, convention, values, exc, ambiguous)
            return _respond(responses.bad_request(str(exc), via_nginx))
        now = time.time()
        for credential in CREDENTIAL_HOOKS:
            found = credential(ctx, request, req, now)
            if found is not None:
                (session, reason), refresh = found, False
                break
        else:
            value = cookie_value(request.headers.get("Cookie"), cfg.session.cookie_name)
            session, reason, refresh = session_of(ctx, value, now)
        # From memory only for a plain credential outcome (a valid session or
        # token, or none at all): other reasons can change the answer (e.g. a
        # token refused while the store is down gets a 503, not the anonymous
        # answer of the same URL).
        usable = not refresh and (reason == "ok" or reason == "absent") and ctx.revocations.last_error is None
        if usable and (hit := memo.answer(key, session, now)) is not None:
            counters[hit[0]].inc()
            return web.Response(headers=hit[1])
        decision = decide(req, session, cfg.policy, cfg.levels, now)
        ans = responses.answer(cfg, decision, req, redirects)
        for hook in ANSWER_HOOKS:
            ans = hook(ctx, request, decision, req, ans, reason, now)
        if decision.outcome is Outcome.ALLOW and ctx.revocations.last_ok is None:
            # The store was never read (only possible while it is down: nothing is
            # served before the first attempt), so the revocation snapshot is empty
            # and a revoked session would pass: refuse signed-in requests until
            # it has been read. Anonymous routes still answer.
            ans = NOT_READ_YET
        resp = _respond(ans)
        if session is not None and refresh:
            resp.headers.add("Set-Cookie", session_cookie(ctx, ctx.runtime.codec.touched(session, now), now))
        counters[decision.outcome].inc()
        if decision.allowed:
            if usable and ans.status == 200:
                memo.remember(key, session, decision.outcome, resp.headers, ans.until)
        else:
            _log_denial(decision, req, reason)
        return resp

    return handle


def _log_refusal(endpoint: str, convention: reqmod.Convention, values: tuple, exc: Exception,
                 ambiguous: bool) -> None:
    """One line per refused request, at most ten a second (logs.Throttle). For
    an ambiguous path, the path as sent (its query left out, cut to 200
    characters), so an operator can see what was refused."""
    skipped = _REFUSALS.allow()
    if skipped is None:
        return
    fields: dict[str, object] = {"endpoint": endpoint, "reason": str(exc)}
    if ambiguous:
        target = dict(zip(convention.fields, values))
        uri = target.get("X-Original-URL") or target.get("X-Original-URI") or target.get("X-Forwarded-Uri") or ""
        fields["path"] = uri.split("?", 1)[0][:200].encode("ascii", "backslashreplace").decode()
    if skipped:
        fields["suppressed"] = skipped
    log.warning("request refused" if not ambiguous else "ambiguous path refused", extra={"fields": fields})


def _log_denial(decision: Decision, req: reqmod.OriginalRequest, cookie: str) -> None:
    if decision.outcome is Outcome.UNAUTHENTICATED and cookie == "absent":
        return  # the common anonymous case; not worth a line each
    log.info(
        "decision",
        extra={
            "fields": {
                "outcome": decision.outcome.value,
                "reason": decision.reason,
                "cookie": cookie,
                "user": decision.session.sub if decision.session else None,
                "host": req.host,
                "path": req.path,
                "method": req.method,
                "client": str(req.client) if req.client else None,
            }
        },
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


# Parts with their own readiness: check(ctx) -> None, or why this process is not ready.
READY_CHECKS: list[Callable[[Context], str | None]] = []


def _stale_grace(ctx: Context) -> float:
    """tokens.stale_grace: how long decisions keep answering from memory while
    the state store is unreachable (the tokens part owns the setting)."""
    try:
        from forwardauth.tokens.settings import settings
    except ImportError:  # pragma: no cover - the part is always shipped
        return 0.0
    return settings(ctx.runtime.config).stale_grace


async def readyz(request: web.Request) -> web.Response:
    """Ready once the state store has been read, and for as long as decisions
    are answered as usual: through a store outage up to tokens.stale_grace
    (answers come from memory meanwhile), so balancers do not pull every
    replica at once during a short outage. Past the grace the parts' checks
    say what is refused; the core's own limit (never shorter than three
    refresh intervals) is the backstop."""
    ctx = request.app[CTX]
    rev = ctx.revocations
    if rev.last_ok is None:
        return web.Response(status=503, text="not ready: state store not read yet\n")
    for check in READY_CHECKS:
        why = check(ctx)
        if why is not None:
            return web.Response(status=503, text=f"not ready: {why}\n")
    limit = max(3 * ctx.runtime.config.revocation_refresh, 5.0, _stale_grace(ctx))
    if time.monotonic() - rev.last_ok > limit:
        return web.Response(status=503, text=f"not ready: state store unreachable ({rev.last_error})\n")
    return web.Response(text="ready\n")


DECISIONS_BY_PATH = web.AppKey("decisions_by_path", dict)


def decisions_first(server: web.Server, app: web.Application) -> None:
    """Send `GET /auth/...` straight to its handler, ahead of the router.

    The decision endpoints are nearly all the traffic, and their handler is
    small enough (see memo.py) that the Application's routing, match-info and
    middleware machinery would be a large part of each request. Everything
    else (pages, API, probes, any other method or a query string) goes through
    the app as usual, so this changes speed, not behaviour: the same handlers
    are also the app's routes.
    """
    by_path = app[DECISIONS_BY_PATH]
    general = server.request_handler

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        handler = by_path.get(request.raw_path)
        if handler is not None and request.method == "GET":
            return await handler(request)
        return await general(request)

    server.request_handler = dispatch


def build_app(runtime: Runtime, store: StateStore | None = None) -> web.Application:
    from forwardauth import extensions

    extensions.load()
    app = web.Application(client_max_size=64 * 1024)
    ctx = Context(runtime, store or open_store(resolve_state_url(runtime.config)))
    app[CTX] = ctx
    decisions = {
        "/auth/nginx": _handler(ctx, reqmod.NGINX, "nginx", redirects=False),
        "/auth/traefik": _handler(ctx, reqmod.FORWARDED, "traefik", redirects=True),
        "/auth/caddy": _handler(ctx, reqmod.FORWARDED, "caddy", redirects=True),
    }
    app[DECISIONS_BY_PATH] = decisions
    for path, handler in decisions.items():
        app.router.add_get(path, handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    for hook in APP_HOOKS:
        hook(app, ctx)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application):
    ctx = app[CTX]
    await ctx.store.open()
    await ctx.refresher.refresh()
    task = asyncio.get_running_loop().create_task(ctx.refresher.run(ctx.store, ctx.runtime.config.revocation_refresh))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ctx.store.close()
