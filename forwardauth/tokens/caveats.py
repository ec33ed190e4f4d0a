"""The closed caveat language of forwardauth tokens, and its exact matchers.

A caveat is ``name=value``. Every caveat on a token must be satisfied; a name
not listed here, or a value that does not parse exactly, denies. Each kind of
caveat only ever *narrows* what the token allows, so a holder who appends
caveats (attenuation) can never widen it:

- ``account=NAME``   the token acts as NAME. Every account caveat must name the
                     same account (two different ones deny).
- ``level=NAME``     the token's level is at most NAME; with several, the
                     lowest wins. At least one is required.
- ``issued=T``       issued at unix time T (the epoch check: a token issued
                     before the account's epoch is revoked). With several, the
                     earliest counts, so appending one cannot dodge an epoch.
- ``expires=T``      dead at unix time T and after. At least one is required.
- ``host=HOST``      the request's host must be exactly HOST.
- ``path=/PREFIX``   the request's (normalised) path must be PREFIX or lie
                     under it on a segment boundary: ``path=/api/read`` allows
                     ``/api/read`` and ``/api/read/x``, not ``/api/readwrite``.
- ``method=GET,HEAD`` the request's method must be one of these.

Pure: no I/O, no clock (`now` is passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forwardauth.core.levels import Levels
from forwardauth.core.paths import casefold_path

NAMES = ("account", "level", "issued", "expires", "host", "path", "method")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TIME_RE = re.compile(r"^\d{1,11}(\.\d{1,6})?$")
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
_PATH_RE = re.compile(r"^/[\x21-\x7e]{0,400}$")


class CaveatError(ValueError):
    """A caveat that is unknown or malformed, or that the request does not satisfy."""


def format_time(t: float) -> str:
    return f"{t:.6f}".rstrip("0").rstrip(".")


def parse_time(value: str) -> float:
    if not _TIME_RE.match(value):
        raise CaveatError("malformed time")
    return float(value)


def parse_methods(value: str) -> frozenset[str]:
    items = value.split(",")
    if not items or any(m not in METHODS for m in items):
        raise CaveatError("malformed method caveat")
    return frozenset(items)


def validate_path(value: str) -> str:
    if not _PATH_RE.match(value) or "//" in value or "/./" in value + "/" or "/../" in value + "/":
        raise CaveatError("malformed path caveat")
    return value


def path_allows(prefix: str, path: str) -> bool:
    """Segment-boundary prefix match on the normalised path."""
    if prefix == "/" or path == prefix:
        return True
    base = prefix if prefix.endswith("/") else prefix + "/"
    return path.startswith(base)


def make(name: str, value: str) -> str:
    """One caveat in canonical form, validated. Raises CaveatError."""
    _value(name, value)
    return f"{name}={value}"


def _value(name: str, value: str) -> object:
    """The typed value of one caveat; CaveatError when unknown or malformed."""
    if name == "account":
        if not ACCOUNT_RE.match(value):
            raise CaveatError("malformed account caveat")
        return value
    if name == "level":
        if not _LEVEL_RE.match(value):
            raise CaveatError("malformed level caveat")
        return value
    if name in ("issued", "expires"):
        return parse_time(value)
    if name == "host":
        if not _HOST_RE.match(value):
            raise CaveatError("malformed host caveat")
        return value
    if name == "path":
        return validate_path(value)
    if name == "method":
        return parse_methods(value)
    raise CaveatError("unknown caveat")


@dataclass(frozen=True)
class Claims:
    """What a token's caveats say, combined. Request-dependent checks are in `check`."""

    account: str
    levels: tuple[str, ...]
    issued: float
    expires: float
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    methods: tuple[frozenset[str], ...] = ()

    def level(self, levels: Levels) -> str:
        """The lowest level named; CaveatError when one is unknown to this config."""
        found = []
        for name in self.levels:
            lv = levels.get(name)
            if lv is None:
                raise CaveatError("unknown level")
            found.append(lv)
        return min(found, key=lambda lv: lv.rank).name

    def check(self, *, now: float, host: str, path: str | tuple[str, ...], method: str | tuple[str, ...]) -> None:
        """Raises CaveatError naming the first unmet caveat.

        `path` and `method` may be every reading of the request (an
        OriginalRequest's `paths` and `methods`): each must be allowed, so a
        token narrowed to `/app/` reaches no other path through any spelling
        an app could route differently."""
        paths = (path,) if isinstance(path, str) else path
        methods = (method,) if isinstance(method, str) else method
        if now >= self.expires:
            raise CaveatError("expired")
        if self.issued > now + 60:
            raise CaveatError("issued in the future")
        for h in self.hosts:
            if host != h:
                raise CaveatError("host not allowed by token")
        for p in self.paths:
            # The primary reading must lie under the prefix as written; the
            # others (paths.path_readings) too, where a case-folded reading is
            # compared with the case-folded prefix (a token for `/App/` still
            # reaches `/App/x`, whose readings include `/app/x`).
            if not path_allows(p, paths[0]) or not all(
                    path_allows(p, r) or path_allows(casefold_path(p), r) for r in paths[1:]):
                raise CaveatError("path not allowed by token")
        for ms in self.methods:
            if not all(m in ms for m in methods):
                raise CaveatError("method not allowed by token")


def parse(caveats: tuple[str, ...] | list[str]) -> Claims:
    """Combine caveats into Claims. Unknown or malformed caveats raise CaveatError."""
    accounts: list[str] = []
    lvls: list[str] = []
    issued: list[float] = []
    expires: list[float] = []
    hosts: list[str] = []
    paths: list[str] = []
    methods: list[frozenset[str]] = []
    found: dict[str, list] = {"account": accounts, "level": lvls, "issued": issued, "expires": expires,
                              "host": hosts, "path": paths, "method": methods}
    for text in caveats:
        name, eq, value = text.partition("=")
        if not eq:
            raise CaveatError("malformed caveat")
        typed = _value(name, value)
        found[name].append(typed)
    if not accounts:
        raise CaveatError("no account caveat")
    if len(set(accounts)) != 1:
        raise CaveatError("conflicting account caveats")
    if not lvls:
        raise CaveatError("no level caveat")
    if not issued:
        raise CaveatError("no issued caveat")
    if not expires:
        raise CaveatError("no expires caveat")
    return Claims(accounts[0], tuple(lvls), min(issued), min(expires), tuple(hosts), tuple(paths), tuple(methods))
