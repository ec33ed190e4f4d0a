"""/auth/nginx, /auth/traefik, /auth/caddy: the aiohttp adapter around core.authorize.

The handler only translates: the peer's address and the request's headers
in, the pipeline's answer out as an aiohttp response, then the counters, the
log line of a denial and its audit line. The deciding is
`core.authorize.Authorizer`'s, the very code `forwardauth explain` runs.
The hot path (cookie present, allow) opens the cookie, checks the in-memory
revocation snapshot and answers from the memo or the policy: no disk, no
network.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web
from multidict import CIMultiDict

from forwardauth.core.authorize import HEALTHY, Authorizer, Refusal, Result, Tally, log_denial
from forwardauth.core.decision import Outcome
from forwardauth.core.request import FORWARDED, NGINX, Convention
from forwardauth.core.runtime import Runtime
from forwardauth.services.audit import request_id
from forwardauth.web.context import AppContext
from forwardauth.web.metrics import BUCKETS, DECISIONS, STATS
from forwardauth.web.retire import retire

log = logging.getLogger("forwardauth")

# endpoint -> (the proxy's convention, whether it passes a 302 on to the browser)
ENDPOINTS: dict[str, tuple[Convention, bool]] = {
    "nginx": (NGINX, False),
    "traefik": (FORWARDED, True),
    "caddy": (FORWARDED, True),
}
_DENIED = (Outcome.DENIED, Outcome.FORBIDDEN)


class DecisionEndpoint:
    """The handler of one decision endpoint, with its pipeline for the current runtime."""

    def __init__(self, ctx: AppContext, endpoint: str):
        self.ctx = ctx
        self.endpoint = endpoint
        self.convention, self.redirects = ENDPOINTS[endpoint]
        self.counts: dict[Tally, int] = DECISIONS.table(endpoint, (*Outcome, *Refusal))  # type: ignore[assignment]
        self.latency, self.latency_sum = STATS.latency(endpoint)
        self.memo_counts = STATS.memo(endpoint)
        self.authorizer: Authorizer | None = None
        self._audit_failed = False

    def pipeline(self, runtime: Runtime) -> Authorizer:
        """The pipeline of `runtime`: built again (with an empty memo) when a reload swapped it."""
        a = self.authorizer
        if a is None or a.runtime is not runtime:
            if a is not None:  # its memo is emptied off the loop, not freed here in one stretch
                retire(a.memo.tables())
            ctx = self.ctx
            a = self.authorizer = Authorizer(runtime, self.convention, redirects=self.redirects,
                                             revocations=ctx.revocations, hooks=ctx.hooks(runtime),
                                             policy=ctx.policy, endpoint=self.endpoint,
                                             memo_counts=self.memo_counts)
        return a

    async def handle(self, request: web.Request) -> web.Response:
        started = perf_counter()
        ctx = self.ctx
        a = self.authorizer
        if a is None or a.runtime is not ctx.runtime:
            a = self.pipeline(ctx.runtime)
        # The store's health: HEALTHY while every refresh succeeds (checked here,
        # without a call: this runs on every decision), else worked out in full.
        health = HEALTHY
        rev = ctx.revocations
        if rev.last_error is not None or rev.last_ok is None:
            health = ctx.health()
        else:
            for r in ctx.refreshed:
                if r.last_error is not None or r.last_ok is None:
                    health = ctx.health()
                    break
        now = time.time()
        result = a.authorize(request.remote, request.headers, now, health)
        self.counts[result.tally] += 1
        if result.denied:
            log_denial(result, ctx.runtime.config.limits.denial_log_lines)
            if result.tally in _DENIED:
                self._audit_denial(request, result, now)
        ans = result.answer
        if not ans.body:  # no Content-Type (one header less on every allow); headers converted once per result
            wire = result.wire
            if wire is None:
                wire = result.wire = CIMultiDict(ans.headers)
            response = web.Response(status=ans.status, headers=wire)  # type: ignore[arg-type]
        else:
            response = web.Response(status=ans.status, text=ans.body, content_type=ans.content_type.split(";")[0],
                                    headers=ans.headers)
        took = perf_counter() - started
        self.latency[bisect_left(BUCKETS, took)] += 1
        self.latency_sum[0] += took
        return response

    def _audit_denial(self, request: web.Request, result: Result, now: float) -> None:
        """A 403 from the decision endpoints is an audit event (the 401s are just "please sign in").

        The line is only queued (AuditLog.emit(background=True)): the decision
        endpoints never wait for the disk, and nothing here can fail the answer.
        """
        decision, req = result.decision, result.request
        assert decision is not None and req is not None
        try:
            self.ctx.audit.emit("decision_denied", background=True,
                                user=decision.session.sub if decision.session else None,
                                client=str(req.client) if req.client else None, host=req.host, path=req.path,
                                level=decision.required_level, reason=decision.reason,
                                request_id=request_id(request.headers), now=now)
        except Exception:  # noqa: BLE001 - the answer goes out whatever happens to its audit line
            if not self._audit_failed:
                self._audit_failed = True
                log.exception("could not write the audit line of a denied decision")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def decisions_first(server: web.Server, app: web.Application, by_path: dict[str, Handler]) -> None:
    """Send `GET /auth/...` straight to its handler, ahead of the router.

    The decision endpoints are nearly all the traffic, and their handler is
    small enough (see core/memo.py) that the Application's routing, match-info
    and middleware machinery would be a large part of each request. Everything
    else (pages, API, probes, any other method or a query string) goes through
    the app as usual, so this changes speed, not behaviour: the same handlers
    are also the app's routes.
    """
    general = server.request_handler

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        handler = by_path.get(request.raw_path)
        if handler is not None and request.method == "GET":
            return await handler(request)  # type: ignore[arg-type]  # the handler reads only what a BaseRequest has
        return await general(request)

    server.request_handler = dispatch
