"""What every handler of one app shares, and what a part adds to an app.

`AppContext` is made once per app (web.app.build_app) and reached from a
handler as `request.app[CTX]`. Its `runtime` is swapped whole on reload.
Parts add to the app only through the `Contribution` their web build
returns (composition.py lists the parts); what one part offers another
(the tokens part's API caller authentication, the sign-in part's password
grant) is a typed field here, set from a contribution, never a module
import between parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from forwardauth.core.authorize import HEALTHY, DecisionHooks, Health, Refreshed, StorePolicy, health_of
from forwardauth.core.config import Config
from forwardauth.core.credentials import Credential, session_cookie
from forwardauth.core.errors import ConfigError
from forwardauth.core.request import client_of
from forwardauth.core.runtime import Runtime
from forwardauth.core.session import Session
from forwardauth.services.audit import AuditLog
from forwardauth.state.base import StateStore
from forwardauth.state.refresh import Refresher
from forwardauth.state.revocations import Revocations
from forwardauth.web.factors import Factor

log = logging.getLogger("forwardauth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, PUT, DELETE
    path: str
    handler: Handler


class DecisionPart(Protocol):
    """What a part adds to the decisions of each runtime (see core.authorize)."""

    def hooks(self, runtime: Runtime) -> DecisionHooks: ...


# --- what one part offers others ------------------------------------------------------


class ApiCaller(Protocol):
    """An authenticated caller of the admin API."""

    @property
    def session(self) -> Session: ...  # who: the account (`sub`), its groups and level

    @property
    def restricted(self) -> bool: ...  # limited to hosts, paths or methods

    @property
    def narrowed(self) -> bool: ...  # anything beyond what forwardauth mints (attenuated, limited)


ApiAuth = Callable[[web.Request], Awaitable[ApiCaller]]


@dataclass(frozen=True)
class Grant:
    """A password (and a TOTP code when the account has one) accepted."""

    user: str
    level: str
    groups: tuple[str, ...]
    email: str | None


PasswordGrant = Callable[[web.Request, str, str, "str | None"], Awaitable[Grant]]
"""(request, username, password, totp code) -> Grant, or raises ApiError
(401 invalid_grant, 429 slow_down, 400 unsupported_grant_type). Offered by
the sign-in part, which checks and audits it as its own sign-in form does."""


SignOut = Callable[[web.Request, Session, str], Awaitable["str | None"]]


@dataclass
class Contribution:
    """What one part adds to one app. Every field is optional."""

    routes: Sequence[Route] = ()
    factors: Sequence[Factor] = ()  # ways to prove a level: /oauth2/start and the sign-in/step-up pages
    decisions: DecisionPart | None = None  # a credential source, headers for an allow
    refresh: Sequence[Callable[[], Awaitable[object]]] = ()  # jobs of the one refresh loop (state.refresh)
    refreshed: Sequence[Refreshed] = ()  # in-memory copies of the store, for the store's health
    startup: Sequence[Callable[[], Awaitable[None]]] = ()  # after the store is open and the revocations read
    shutdown: Sequence[Callable[[], Awaitable[None]]] = ()  # before the store closes
    cleanup: Sequence[Callable[[], Awaitable[None]]] = ()  # after it closed
    sign_out: SignOut | None = None  # where to continue after sign-out (e.g. the provider's logout)
    api_auth: ApiAuth | None = None  # who calls the admin API (offered by the tokens part)
    password_grant: PasswordGrant | None = None  # a password (+ TOTP) checked (offered by the sign-in part)
    openapi: Mapping[str, Any] = field(default_factory=dict)  # {"paths": ..., "schemas": ...} of its API routes


ConfigLoader = Callable[[str], Config]
PolicyOf = Callable[[Config], StorePolicy]


@dataclass
class AppContext:
    """What every handler shares. `runtime` is swapped whole on reload."""

    runtime: Runtime
    store: StateStore
    audit: AuditLog
    load_config: ConfigLoader  # with every part's config sections (composition.load_config)
    policy_of: PolicyOf  # the state store outage policy of a config (from the tokens part's settings)
    revocations: Revocations = field(default_factory=Revocations)
    refresher: Refresher = field(default_factory=Refresher)  # every snapshot of the store, revocations first
    refreshed: list[Refreshed] = field(default_factory=list)
    decisions: list[DecisionPart] = field(default_factory=list)
    factors: list[Factor] = field(default_factory=list)
    sign_out: list[SignOut] = field(default_factory=list)
    api_auth: ApiAuth | None = None
    password_grant: PasswordGrant | None = None
    openapi: list[Mapping[str, Any]] = field(default_factory=list)
    _policy: tuple[Runtime, StorePolicy] | None = None

    def __post_init__(self) -> None:
        self.refresher.add(lambda: self.revocations.refresh(self.store))

    def reload(self) -> bool:
        """SIGHUP: the config and key ring again (a bad one is refused), and the audit
        log's file opened again (logrotate renamed it), whatever the config says."""
        self.audit.reopen()
        path = self.runtime.config.path
        try:
            rt = Runtime.build(self.load_config(path))
        except ConfigError as exc:
            log.error("reload refused; the running configuration is kept", extra={"fields": {"problems": exc.problems}})
            return False
        if rt.config.state != self.runtime.config.state:
            log.warning("state URL changes need a restart; keeping the current store")
        self.runtime = rt
        log.info("configuration reloaded", extra={"fields": {"rules": len(rt.config.policy.rules)}})
        return True

    @property
    def policy(self) -> StorePolicy:
        """The outage policy of the current runtime."""
        p = self._policy
        if p is None or p[0] is not self.runtime:
            p = self._policy = (self.runtime, self.policy_of(self.runtime.config))
        return p[1]

    def health(self, full: bool = False) -> Health:
        """The state store's health now (HEALTHY, without reading the clock, while every refresh succeeds)."""
        rev = self.revocations
        if not full and rev.last_error is None and rev.last_ok is not None:
            for r in self.refreshed:
                if r.last_error is not None or r.last_ok is None:
                    break
            else:
                return HEALTHY
        return health_of(rev, self.refreshed, time.monotonic(), full)

    def hooks(self, runtime: Runtime) -> list[DecisionHooks]:
        return [d.hooks(runtime) for d in self.decisions]

    def session(self, request: web.BaseRequest, now: float | None = None) -> Credential:
        """The request's session cookie, checked (revocation applied)."""
        rt = self.runtime
        value = request.cookies.get(rt.config.session.cookie_name)
        return session_cookie(rt.codec, value, self.revocations, time.time() if now is None else now)

    def current_session(self, request: web.BaseRequest, now: float | None = None) -> Session | None:
        return self.session(request, now).session

    def client(self, request: web.BaseRequest) -> str | None:
        """The browser's address: X-Forwarded-For is believed only from a trusted proxy."""
        addr = client_of(request.remote, request.headers.get("X-Forwarded-For"),
                         self.runtime.config.server.trusted_proxies)
        return str(addr) if addr else None

    def session_cookie(self, session: Session, now: float) -> str:
        """Set-Cookie for a new or changed session."""
        from forwardauth.core.cookies import set_cookie

        rt = self.runtime
        return set_cookie(rt.config.session, rt.config.session.cookie_name, rt.codec.seal(session),
                          int(session.exp - now))


CTX = web.AppKey("ctx", AppContext)

