"""What every `forwardauth` command works with, core's and the parts' alike.

A part's commands are registered with `register(sub, env)` (composition.py
lists them) and run as `func(args, env)`: the `CliEnv` loads configs with
every part's config section and opens the configured audit log, so a part's
command never imports the composition or another part. No aiohttp here.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypeVar

from forwardauth.core.config import Config
from forwardauth.core.defaults import embedded_default
from forwardauth.core.durations import parse_duration
from forwardauth.core.runtime import store_problem
from forwardauth.services.audit import AuditLog, audit_log
from forwardauth.state.base import StoreUnavailable

T = TypeVar("T")


class CliError(Exception):
    """A usage or input problem: printed as one line, exit status 2."""


@dataclass(frozen=True)
class CliEnv:
    """Given to every command by the composition."""

    load: Callable[[str], Config]  # a config file, with every part's sections
    parse: Callable[[str, str], Config]  # config text (and the file it is from), likewise
    audit_target: Callable[[Config], str]  # the audit log setting's value (local.audit)

    def config(self, args: argparse.Namespace) -> Config:
        """The config of `-c/--config`."""
        return self.load(args.config)

    def config_or_default(self, args: argparse.Namespace) -> Config:
        """`-c/--config`, or the embedded default with `--data-dir` (as `serve` uses it)."""
        if args.config:
            return self.load(args.config)
        return embedded_default(Path(args.data_dir), self.parse)

    def audit(self, cfg: Config) -> AuditLog:
        """The configured audit log, with stdout turned to stderr (stdout is the command's own output)."""
        return audit_log(cfg, self.audit_target(cfg), cli=True)


Command = Callable[[argparse.Namespace, CliEnv], int]  # what `set_defaults(func=...)` names; returns the exit status
SubCommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register = Callable[[SubCommands], None]  # adds a command group to `forwardauth`


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated argument: its non-empty items, stripped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def duration(text: str) -> float:
    """A duration argument (90s, 15m, 12h, 30d)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def with_store(cfg: Config, work: Awaitable[T]) -> T:
    """Run `work`, which opens the state store; a store that cannot be opened or
    reached (no such directory, no permission, Redis down) is a CliError."""
    try:
        return await work
    except (OSError, StoreUnavailable) as exc:
        raise CliError(store_problem(cfg, exc)) from None
