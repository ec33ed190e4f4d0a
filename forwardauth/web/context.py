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

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from forwardauth.services.apart import is_large, load_apart
from forwardauth.services.audit import AuditLog
from forwardauth.state.base import StateStore
from forwardauth.state.refresh import Refresher
from forwardauth.state.revocations import Revocations
from forwardauth.web.factors import Factor
from forwardauth.web.retire import retire

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
    _reload: asyncio.Task[None] | None = None  # the reload running (sighup)
    _reload_again: bool = False  # a SIGHUP came while it ran

    def __post_init__(self) -> None:
        self.refresher.add(lambda: self.revocations.refresh(self.store))

    def reload(self) -> bool:
        """Load the config file again and swap the new runtime in, here and now
        (tests, tools), and open the audit log's file again. A config that does
        not load keeps the running one."""
        self.audit.reopen()
        rt = self._build_runtime()
        if rt is None:
            return False
        self._swap(rt)
        return True

    def sighup(self) -> None:
        """SIGHUP: reload without stalling decisions. The new runtime (config
        parsed, policy indexed, key ring loaded) is built on a thread, off the
        event loop, and swapped in whole by one assignment on the loop; until
        then decisions use the old one. A SIGHUP while a reload runs is folded
        into one more reload after it (the file may have changed again), never
        queued one per signal. The audit log's file is opened again at once, on
        every SIGHUP (logrotate renamed it), whatever the config says."""
        self.audit.reopen()
        if self._reload is not None:
            self._reload_again = True
            return
        self._reload = asyncio.get_running_loop().create_task(self._reload_off_loop())

    async def _reload_off_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._reload_again = False
                started = time.monotonic()
                rt = await loop.run_in_executor(_reload_executor(), self._build_off_loop)
                if rt is not None:
                    self._swap(rt, time.monotonic() - started)
                    # What the new runtime is made of lives until the next reload:
                    # out of the collector's generations, like at start-up (serving.py).
                    gc.freeze()
                if not self._reload_again:
                    break
        finally:
            self._reload = None

    def _build_off_loop(self) -> Runtime | None:
        """On the reload thread. A large config file (services.apart.is_large)
        is read and validated in a child process (parsing a large policy's
        YAML is seconds of CPU that would share the GIL with the event loop,
        and its peak memory would stay with this process); what comes back is the validated Config,
        pickled, whose unpickling and the key ring are all this process
        does, with a shorter GIL switch interval (the loop gets it back
        sooner) and no collection walking the old runtime meanwhile. A small
        one (milliseconds to parse, less than a child's start), or without a
        child process (none can be started, or the loader does not pickle),
        the thread parses itself."""
        path = self.runtime.config.path
        interval = sys.getswitchinterval()
        collecting = gc.isenabled()
        # From the start: the child's result is unpickled by the executor's own thread, as it arrives.
        sys.setswitchinterval(min(interval, RELOAD_SWITCH_INTERVAL))
        try:
            try:
                config = load_apart(self.load_config, path, background=True) if is_large(path) else None
            except ConfigError as exc:
                log.error("reload refused; the running configuration is kept",
                          extra={"fields": {"problems": exc.problems}})
                return None
            except Exception:  # noqa: BLE001 - no child process: the same work here
                config = None
            gc.disable()
            if config is None:
                return self._build_runtime()
            try:
                return Runtime.build(config)
            except ConfigError as exc:
                log.error("reload refused; the running configuration is kept",
                          extra={"fields": {"problems": exc.problems}})
                return None
        finally:
            if collecting:
                gc.enable()
            sys.setswitchinterval(interval)

    def _build_runtime(self) -> Runtime | None:
        try:
            return Runtime.build(self.load_config(self.runtime.config.path))
        except ConfigError as exc:
            log.error("reload refused; the running configuration is kept", extra={"fields": {"problems": exc.problems}})
            return None

    def _swap(self, rt: Runtime, took: float | None = None) -> None:
        if rt.config.state != self.runtime.config.state:
            log.warning("state URL changes need a restart; keeping the current store")
        old, self.runtime = self.runtime, rt
        retire(old.caches())  # emptied off the loop (web/retire.py)
        fields: dict[str, object] = {"rules": len(rt.config.policy.rules)}
        if took is not None:
            fields["seconds"] = round(took, 2)  # from the start of the reload to the swap (off the loop)
        log.info("configuration reloaded", extra={"fields": fields})

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

RELOAD_SWITCH_INTERVAL = 0.0005  # seconds: the GIL's switch interval while a reload builds
_EXECUTOR: list[ThreadPoolExecutor] = []


def _reload_executor() -> ThreadPoolExecutor:
    """The one thread reloads are built on (made when first needed)."""
    if not _EXECUTOR:
        _EXECUTOR.append(ThreadPoolExecutor(1, thread_name_prefix="forwardauth-reload"))
    return _EXECUTOR[0]

