"""The parts of forwardauth, in the order they apply, and everything built from them.

This is the one place that knows every part. A part is a package
(forwardauth/signin, oidc, tokens, ...) that never imports another part;
its `Part` entry below says what it adds:

- `sections`: its config sections and their parsers (core.config.Reader);
- `commands`: its `forwardauth` command groups (loaded lazily: the CLI
  modules import no aiohttp, so `forwardauth check` stays light);
- `web`: its web build, `build(app, ctx) -> web.context.Contribution`
  (routes, factors for /oauth2/start and the sign-in/step-up pages,
  decision hooks, background work, admin API routes and their OpenAPI
  paths, what it offers other parts); loaded only when serving;
- `decisions`: what `forwardauth explain` loads to run the part's decision
  hooks outside the server (the tokens part's bearer tokens);
- `audit_target`, `store_policy`: settings of its section that the whole
  app uses (the audit log's file, the state store outage policy).

The order matters where parts are asked in turn: credential sources
(before the session cookie) and the factors of /oauth2/start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from forwardauth.core.authorize import StorePolicy
from forwardauth.core.config import Config, SectionParser
from forwardauth.core.config import parse_config as _parse
from forwardauth.core.runtime import Runtime
from forwardauth.devices import settings as devices_settings
from forwardauth.oidc import settings as oidc_settings
from forwardauth.services import configcache
from forwardauth.services.commands import CliEnv, Register
from forwardauth.signin import settings as signin_settings
from forwardauth.tokens import settings as tokens_settings
from forwardauth.webauthn import settings as webauthn_settings

if TYPE_CHECKING:  # the web layer imports aiohttp: only `serve` loads it
    from aiohttp import web

    from forwardauth.core.credentials import RevocationView
    from forwardauth.state.base import StateStore
    from forwardauth.web.app import WebBuild
    from forwardauth.web.context import DecisionPart

DecisionLoader = Callable[["StateStore", "RevocationView"], Awaitable["DecisionPart"]]


@dataclass(frozen=True)
class Part:
    """What one part adds to forwardauth. Only `name` is required."""

    name: str
    sections: Mapping[str, SectionParser] = field(default_factory=dict)
    commands: Callable[[], Sequence[Register]] | None = None
    web: Callable[[], WebBuild] | None = None
    decisions: Callable[[], DecisionLoader] | None = None
    audit_target: Callable[[Config], str] | None = None
    store_policy: Callable[[Config], StorePolicy] | None = None


# --- the parts' lazy loaders (imports inside functions: nothing is loaded until used) ---


def _signin_commands() -> Sequence[Register]:
    from forwardauth.signin import cli

    return cli.commands()


def _signin_web() -> WebBuild:
    from forwardauth.signin import web

    return web.build


def _oidc_web() -> WebBuild:
    from forwardauth.oidc import web

    return web.build


def _webauthn_commands() -> Sequence[Register]:
    from forwardauth.webauthn import cli

    return cli.commands()


def _webauthn_web() -> WebBuild:
    from forwardauth.webauthn import web

    return web.build


def _tokens_commands() -> Sequence[Register]:
    from forwardauth.tokens import cli

    return cli.commands()


def _tokens_web() -> WebBuild:
    from forwardauth.tokens import web

    return web.build


def _tokens_decisions() -> DecisionLoader:
    from forwardauth.tokens.decisions import BearerTokens

    async def load(store: StateStore, revocations: RevocationView) -> DecisionPart:
        tokens = BearerTokens(revocations)
        await tokens.load(store)
        return tokens

    return load


def _tokens_store_policy(cfg: Config) -> StorePolicy:
    s = tokens_settings.settings(cfg)
    return StorePolicy(s.stale_grace, s.stale_sessions_up_to, cfg.revocation_refresh)


def _devices_commands() -> Sequence[Register]:
    from forwardauth.devices import cli

    return cli.commands()


def _devices_web() -> WebBuild:
    from forwardauth.devices import web

    return web.build


# devices comes first: /oauth2/start asks its factor before the local one, which
# would otherwise answer a step-up chosen as "Approve on my device" (via=device)
# with the TOTP page. The device factor answers only that choice, or a level no
# other way can prove; its offers come first on the sign-in and step-up pages.
PARTS: tuple[Part, ...] = (
    Part("devices", sections={"devices": devices_settings.parse}, commands=_devices_commands, web=_devices_web),
    Part("signin", sections={"local": signin_settings.parse}, commands=_signin_commands, web=_signin_web,
         audit_target=lambda cfg: signin_settings.settings(cfg).audit),
    # Before the upstream provider: a user with a usable key for the level uses it (webauthn.web.start).
    Part("webauthn", sections={"webauthn": webauthn_settings.parse}, commands=_webauthn_commands,
         web=_webauthn_web),
    Part("oidc", sections={"oidc": oidc_settings.parse}, web=_oidc_web),
    Part("tokens", sections={"tokens": tokens_settings.parse}, commands=_tokens_commands, web=_tokens_web,
         decisions=_tokens_decisions, store_policy=_tokens_store_policy),
)

SECTIONS: dict[str, SectionParser] = {name: parse for p in PARTS for name, parse in p.sections.items()}


# --- what is built from the list -----------------------------------------------------------


def parse_config(text: str, file: str = "<config>") -> Config:
    """Config text with every part's sections."""
    return _parse(text, file, SECTIONS)


def load_config(path: str | Path) -> Config:
    """A config file with every part's sections (a large one's YAML value kept: services/configcache.py)."""
    return configcache.load_config(path, SECTIONS)


def audit_target(cfg: Config) -> str:
    """The audit log setting's value (`local.audit`; stdout without it)."""
    for p in PARTS:
        if p.audit_target is not None:
            return p.audit_target(cfg)
    return "stdout"


def store_policy(cfg: Config) -> StorePolicy:
    """What a state store outage refuses (tokens.stale_grace, tokens.stale_sessions_up_to)."""
    for p in PARTS:
        if p.store_policy is not None:
            return p.store_policy(cfg)
    return StorePolicy(refresh_interval=cfg.revocation_refresh)


def cli_env() -> CliEnv:
    return CliEnv(load=load_config, parse=parse_config, audit_target=audit_target)


def commands() -> list[Register]:
    """Every part's command groups, in part order."""
    return [register for p in PARTS if p.commands is not None for register in p.commands()]


def decision_loaders() -> list[DecisionLoader]:
    """What `forwardauth explain` loads to run the parts' decision hooks."""
    return [p.decisions() for p in PARTS if p.decisions is not None]


def build_app(runtime: Runtime, store: StateStore | None = None) -> web.Application:
    """The web app with every part: what `forwardauth serve` runs (and the tests)."""
    from forwardauth.web.app import build_app as build

    return build(runtime, store, [p.web() for p in PARTS if p.web is not None], load_config=load_config,
                 policy_of=store_policy, audit_target=audit_target)


def web_stack() -> None:
    """Import what serving needs (aiohttp, the web layer, every part's web
    build): `serve` does it while a child process parses a large config."""
    import forwardauth.web.serving  # noqa: F401

    for p in PARTS:
        if p.web is not None:
            p.web()


def serve(config: Config, workers: int) -> int:
    """Run the server until SIGTERM/SIGINT; the exit status."""
    from forwardauth.web.serving import serve as run

    return run(config, workers, build_app)
