"""Everything built once from a validated config: the objects the hot path uses.

A reload builds a new Runtime and swaps it in whole; a bad config never
replaces a good one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forwardauth.core.config import Config
from forwardauth.core.credentials import SessionCodec
from forwardauth.core.errors import ConfigError
from forwardauth.core.keyring import KeyRing, KeyRingError
from forwardauth.core.request import TrustedNetworks
from forwardauth.core.sealing import Sealer


@dataclass(frozen=True)
class Runtime:
    config: Config
    keyring: KeyRing
    codec: SessionCodec
    trusted: TrustedNetworks

    def caches(self) -> tuple[MutableMapping[Any, Any], ...]:
        """What this runtime remembers as it serves (the opened cookies, the policy's per-host tests):
        emptied off the event loop once a reload replaced it (web/retire.py)."""
        return (self.codec.opened, self.config.policy.cache)

    @classmethod
    def build(cls, config: Config) -> Runtime:
        try:
            if config.keys.file:
                ring = KeyRing.load(resolve_path(config, config.keys.file))
            else:
                ring = KeyRing.from_entries(list(config.keys.inline), f"{config.path}: keys.inline")
        except KeyRingError as exc:
            raise ConfigError([str(exc)]) from None
        codec = SessionCodec(
            Sealer(ring, "session:" + config.session.cookie_name),
            config.levels,
            config.session.lifetime,
            config.session.idle_timeout,
            config.server.memo_entries,
        )
        return cls(config, ring, codec, TrustedNetworks(config.server.trusted_proxies))


def resolve_path(config: Config, path: str) -> Path:
    """Relative paths in a config file are relative to that file."""
    p = Path(path)
    return p if p.is_absolute() else Path(config.path).parent / p


def resolve_state_url(config: Config) -> str:
    if config.state.startswith("sqlite://"):
        return "sqlite://" + str(resolve_path(config, config.state[len("sqlite://") :]))
    return config.state


def store_label(config: Config) -> str:
    """The state store, for messages: an SQLite store's file, else only the
    scheme (a Redis URL may hold a password)."""
    url = resolve_state_url(config)
    if url.startswith("sqlite://"):
        return url
    return url.split("://", 1)[0] + "://..."


def store_problem(config: Config, exc: BaseException) -> str:
    """One line for a state store that cannot be opened or reached."""
    if isinstance(exc, OSError):
        why = f"cannot open: {exc.strerror or exc.__class__.__name__}" + (f" ({exc.filename})" if exc.filename else "")
    else:
        why = str(exc)
        if why.startswith("sqlite state "):  # the SQLite store names its file itself
            return f"state store: {why}"
    return f"state store {store_label(config)}: {why}"
