"""Configuration: YAML in, validated once into frozen objects.

Every problem names the file, the place (section, rule index, field) and the
offending value, and all problems are reported together. Unknown keys are
errors: a misspelt `max_age` silently ignored would be a security hole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forwardauth.core import yamlsafe
from forwardauth.core.durations import format_duration, parse_duration
from forwardauth.core.errors import ConfigError
from forwardauth.core.levels import Level, Levels
from forwardauth.core.limits import Limits, parse_limits
from forwardauth.core.policy import Action, PathPattern, Policy, Rule
from forwardauth.core.shown import show

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADER_SETS = ("x-auth-request", "remote")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_COOKIE_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


@dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 4180
    public_url: str = "http://127.0.0.1:4180"
    trusted_proxies: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    allowed_redirect_domains: tuple[str, ...] = ()
    realm: str = "forwardauth"
    workers: int = 1
    memo_entries: int = 20_000  # each table of remembered answers and opened cookies (core/memo.py)
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class SessionConfig:
    cookie_name: str = "__Host-forwardauth"
    domain: str | None = None
    secure: bool = True
    same_site: str = "Lax"
    lifetime: float = 12 * 3600
    idle_timeout: float = 3600


@dataclass(frozen=True)
class KeysConfig:
    file: str | None = None
    inline: tuple[dict, ...] = ()


@dataclass(frozen=True)
class HeadersConfig:
    sets: tuple[str, ...] = HEADER_SETS
    groups_separator: str = ","


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    session: SessionConfig
    keys: KeysConfig
    state: str
    revocation_refresh: float
    headers: HeadersConfig
    levels: Levels
    policy: Policy
    # Sections owned by the parts (oidc, local, tokens, ...), parsed by the
    # parsers the parts declare (composition.py passes them to parse_config).
    sections: dict[str, Any] = field(default_factory=dict)
    # Valid but probably not meant (shown by `check`, logged by `serve`).
    warnings: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


# A part's config section: parser(reader, raw value, config so far) -> its
# frozen settings object. "So far": server, session, levels and policy.
SectionParser = Callable[["Reader", Any, dict[str, Any]], Any]


class Reader:
    """Collects problems with their location instead of stopping at the first."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.problems.append(f"{self.file}: {where}: {message}")

    def warning(self, where: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"must be a mapping, got {show(value)}")
            return {}
        for k in value:
            if k not in allowed:
                self.error(f"{where}.{k}" if where else str(k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, d: dict, key: str, where: str, default: Any = None, pattern: re.Pattern | None = None) -> Any:
        v = d.get(key, default)
        if v is default:
            return v
        if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
            self.error(f"{where}.{key}", f"invalid value {show(v)}")
            return default
        return v

    def boolean(self, d: dict, key: str, where: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.error(f"{where}.{key}", f"must be true or false, got {show(v)}")
            return default
        return v

    def integer(self, d: dict, key: str, where: str, default: int, lo: int, hi: int) -> int:
        """An integer from lo to hi (a YAML true is not 1); the default when absent or wrong."""
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.error(f"{where}.{key}", f"must be an integer from {lo} to {hi}, got {show(v)}")
            return default
        return v

    def duration(self, d: dict, key: str, where: str, default: float | None) -> float | None:
        if key not in d:
            return default
        try:
            return parse_duration(d[key])
        except ValueError as exc:
            self.error(f"{where}.{key}", str(exc))
            return default

    def str_list(self, d: dict, key: str, where: str) -> list[str] | None:
        if key not in d:
            return None
        v = d[key]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            self.error(f"{where}.{key}", f"must be a non-empty list of strings, got {show(v)}")
            return None
        return v

    def networks(self, d: dict, key: str, where: str) -> tuple[IPNetwork, ...] | None:
        items = self.str_list(d, key, where)
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.error(f"{where}.{key}[{i}]", f"not an IP network (CIDR): {show(item)}")
        return tuple(out)


def load_config(path: str | Path, sections: Mapping[str, SectionParser] | None = None) -> Config:
    """Read and validate a YAML config file. Raises ConfigError listing every problem.
    `sections`: the parts' config sections (composition.load_config passes them all)."""
    data = read_file(path)
    return parse_config(decode(data, path), str(path), sections)


def read_file(path: str | Path) -> bytes:
    """A config file's bytes, or ConfigError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None


def decode(data: bytes, path: str | Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # was a traceback out of `check` (found by bench/fuzz.py's inputs)
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None


def parse_config(text: str, file: str = "<config>", sections: Mapping[str, SectionParser] | None = None) -> Config:
    """Parse and validate config text; a key that is neither the core's nor one
    of `sections` is an error."""
    return validate(read_yaml(text, file), file, sections)


def read_yaml(text: str, file: str = "<config>") -> Any:
    """The YAML document's value (core.yamlsafe's bounds), or ConfigError naming the line."""
    try:
        return yamlsafe.load(text)
    except yamlsafe.YamlRefused as exc:
        raise ConfigError([f"{file}: YAML: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([f"{file}: {where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None


def validate(raw: Any, file: str = "<config>", sections: Mapping[str, SectionParser] | None = None) -> Config:
    """A YAML document's value (read_yaml's, or the same value kept by
    services.configcache) validated into a Config; ConfigError lists every problem."""
    parsers = sections or {}
    r = Reader(file)
    if raw is None:
        raw = {}
    core = {"server", "session", "keys", "state", "revocation", "headers", "levels", "policy", "limits"}
    top = r.mapping(raw, "", core | set(parsers))
    server = _server(r, top.get("server"))
    session = _session(r, top.get("session"))
    keys = _keys(r, top.get("keys"))
    state = _state(r, top.get("state", "sqlite://var/state.db"))
    rev = r.mapping(top.get("revocation"), "revocation", {"refresh_interval"})
    refresh = r.duration(rev, "refresh_interval", "revocation", 2.0)
    if refresh is None or refresh < 0.05:
        if refresh is not None:
            r.error("revocation.refresh_interval", f"must be at least 50ms, got {show(rev['refresh_interval'])}")
        refresh = 2.0
    headers = _headers(r, top.get("headers"))
    limits = parse_limits(r, top.get("limits"))
    levels = _levels(r, top.get("levels"))
    policy = _policy(r, top.get("policy"), levels)
    so_far: dict[str, Any] = {"server": server, "session": session, "levels": levels, "policy": policy}
    parsed = {}
    for name, parser in parsers.items():
        if name in top:
            parsed[name] = parser(r, top[name], so_far)
    if r.problems:
        raise ConfigError(r.problems)
    return Config(file, server, session, keys, state, refresh, headers, levels, policy, parsed, tuple(r.warnings),
                  limits)


def _server(r: Reader, raw: Any) -> ServerConfig:
    w = "server"
    d = r.mapping(
        raw,
        w,
        {"listen", "public_url", "trusted_proxies", "allowed_redirect_domains", "realm", "workers", "memo_entries",
         "tls"},
    )
    dflt = ServerConfig()
    host, port = dflt.listen_host, dflt.listen_port
    listen = d.get("listen")
    if listen is not None:
        m = re.match(r"^\[?([0-9A-Za-z.:-]+?)\]?:(\d{1,5})$", listen) if isinstance(listen, str) else None
        if not m or not (0 < int(m.group(2)) < 65536):
            r.error(f"{w}.listen", f"must be HOST:PORT, got {show(listen)}")
        else:
            host, port = m.group(1), int(m.group(2))
    public_url = r.string(d, "public_url", w, f"http://{host}:{port}")
    if not re.match(r"^https?://[^/?#@\s]+$", public_url.rstrip("/")):
        r.error(f"{w}.public_url", f"must be an http(s) URL with no path, query or userinfo, got {show(public_url)}")
    tp = r.networks(d, "trusted_proxies", w)
    domains = r.str_list(d, "allowed_redirect_domains", w) or []
    for i, dom in enumerate(domains):
        if not _HOST_RE.match(dom.lstrip(".").lower()) or dom.startswith("*"):
            r.error(f"{w}.allowed_redirect_domains[{i}]", f"must be a host or .domain, got {show(dom)}")
    workers = r.integer(d, "workers", w, 1, 1, 64)
    memo = r.integer(d, "memo_entries", w, dflt.memo_entries, 100, 10_000_000)
    tls = r.mapping(d.get("tls"), f"{w}.tls", {"cert", "key"})
    cert, key = r.string(tls, "cert", f"{w}.tls"), r.string(tls, "key", f"{w}.tls")
    if bool(cert) != bool(key):
        r.error(f"{w}.tls", "needs both cert and key")
    realm = r.string(d, "realm", w, "forwardauth", re.compile(r'^[^"\\\x00-\x1f]{1,64}$'))
    return ServerConfig(
        host,
        port,
        public_url.rstrip("/"),
        tp if tp is not None else dflt.trusted_proxies,
        tuple(x.lower() for x in domains),
        realm,
        workers,
        memo,
        cert,
        key,
    )


def _session(r: Reader, raw: Any) -> SessionConfig:
    w = "session"
    d = r.mapping(raw, w, {"cookie_name", "domain", "secure", "same_site", "lifetime", "idle_timeout"})
    dflt = SessionConfig()
    name = r.string(d, "cookie_name", w, dflt.cookie_name, _COOKIE_NAME_RE)
    domain = r.string(d, "domain", w, None)
    secure = r.boolean(d, "secure", w, True)
    same_site = r.string(d, "same_site", w, "lax")
    if same_site.lower() not in ("lax", "strict"):
        r.error(f"{w}.same_site", f"must be lax or strict, got {show(same_site)}")
        same_site = "lax"
    lifetime = r.duration(d, "lifetime", w, dflt.lifetime)
    idle = r.duration(d, "idle_timeout", w, dflt.idle_timeout)
    if lifetime is not None and lifetime < 60:
        r.error(f"{w}.lifetime", "must be at least 60s")
    if idle is not None and idle < 2:
        r.error(f"{w}.idle_timeout", "must be at least 2s")
    if idle is not None and lifetime is not None and idle > lifetime:
        r.error(f"{w}.idle_timeout", f"must not be longer than session.lifetime ({format_duration(lifetime)}), "
                                     f"got {format_duration(idle)}")
    if name.startswith("__Host-") and (domain or not secure):
        r.error(f"{w}.cookie_name", "a __Host- cookie needs secure: true and no domain")
    if name.startswith("__Secure-") and not secure:
        r.error(f"{w}.cookie_name", "a __Secure- cookie needs secure: true")
    if domain is not None and not _HOST_RE.match(domain.lstrip(".").lower()):
        r.error(f"{w}.domain", f"not a domain: {show(domain)}")
    return SessionConfig(name, domain, secure, same_site.capitalize(), lifetime or 0, idle or 0)


def _keys(r: Reader, raw: Any) -> KeysConfig:
    d = r.mapping(raw, "keys", {"file", "inline"})
    file = r.string(d, "file", "keys", None)
    inline = d.get("inline")
    if inline is not None and not isinstance(inline, list):
        r.error("keys.inline", "must be a list of {id, secret}")
        inline = None
    if not file and not inline:
        r.error("keys", "needs `file` (see: forwardauth keys generate) or `inline`")
    if file and inline:
        r.error("keys", "give either `file` or `inline`, not both")
    return KeysConfig(file, tuple(inline or ()))


def _state(r: Reader, raw: Any) -> str:
    if not isinstance(raw, str) or not re.match(r"^(sqlite://.+|memory://|redis(s)?://.+|redis\+sentinel://.+)$", raw):
        r.error("state", f"must be sqlite:///path, memory://, redis://... or redis+sentinel://..., got {show(raw)}")
        return "memory://"
    if raw.startswith("redis+sentinel://") and not re.match(
            r"^redis\+sentinel://([^@/]*@)?[^@/,:]+:\d+(,[^@/,:]+:\d+)*/[^/]+(/\d+)?/?$", raw):
        r.error("state", "a sentinel URL is redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
        return "memory://"
    return raw


def _headers(r: Reader, raw: Any) -> HeadersConfig:
    d = r.mapping(raw, "headers", {"sets", "groups_separator"})
    sets = r.str_list(d, "sets", "headers")
    if sets is not None:
        for i, s in enumerate(sets):
            if s not in HEADER_SETS:
                r.error(f"headers.sets[{i}]", f"must be one of {', '.join(HEADER_SETS)}, got {show(s)}")
    sep = r.string(d, "groups_separator", "headers", ",", re.compile(r"^[,;| ]$"))
    return HeadersConfig(tuple(sets) if sets is not None else HEADER_SETS, sep)


def _levels(r: Reader, raw: Any) -> Levels:
    if not isinstance(raw, list) or not raw:
        r.error("levels", "must be a non-empty list, lowest level first")
        return Levels((Level("password", 0),))
    items: list[Level] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        w = f"levels[{i}]"
        d = r.mapping(entry, w, {"name", "acr", "amr", "local_factor"})
        name = d.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            r.error(f"{w}.name", f"must be a short name (letters, digits, _.:-), got {show(name)}")
            continue
        if name in seen:
            r.error(f"{w}.name", f"duplicate level {name!r}")
            continue
        seen.add(name)
        w = f"levels[{i}] ({name})"
        acr = _claim_values(r, d, "acr", w)
        amr = _claim_values(r, d, "amr", w)
        lf = r.string(d, "local_factor", w, None)
        if not (acr or amr or lf) and not any(k in d for k in ("acr", "amr", "local_factor")):
            r.warning(w, "lists no acr, amr or local_factor, so no sign-in at the provider and no second factor "
                         "proves it (only local.password_level, tokens or `forwardauth session issue` grant it)")
        items.append(Level(name, len(items), tuple(acr), tuple(amr), lf))
    all_acr = [a for lv in items for a in lv.acr]
    for a in {a for a in all_acr if all_acr.count(a) > 1}:
        r.error("levels", f"acr value {a!r} is listed for more than one level")
    return Levels(tuple(items)) if items else Levels((Level("password", 0),))


# acr/amr values go into the WWW-Authenticate challenge (quoted, space-separated
# acr_values) and into the provider request: printable ASCII without space,
# `"` or `\` (RFC 6749's NQCHAR less space), which also covers URIs and URNs.
_CLAIM_RE = re.compile(r'^[\x21\x23-\x5b\x5d-\x7e]{1,256}$')


def _claim_values(r: Reader, d: dict, key: str, where: str) -> list[str]:
    values = r.str_list(d, key, where) or []
    for j, v in enumerate(values):
        if not _CLAIM_RE.match(v):
            r.error(f"{where}.{key}[{j}]", f"must be 1-256 printable ASCII characters without spaces, quotes or "
                                           f"backslashes, got {show(v)}")
    return [v for v in values if _CLAIM_RE.match(v)]


def _policy(r: Reader, raw: Any, levels: Levels) -> Policy:
    d = r.mapping(raw, "policy", {"default", "rules"})
    default = d.get("default", "deny")
    if default not in ("deny", "anonymous"):
        r.error("policy.default", f"must be deny or anonymous, got {show(default)}")
        default = "deny"
    raw_rules = d.get("rules", [])
    if not isinstance(raw_rules, list):
        r.error("policy.rules", "must be a list")
        raw_rules = []
    rules = [rule for i, entry in enumerate(raw_rules) if (rule := _rule(r, i, entry, levels)) is not None]
    return Policy.build(rules, Action(default))


_RULE_KEYS = {
    "name",
    "hosts",
    "paths",
    "methods",
    "networks",
    "allow",
    "deny",
    "level",
    "methods_levels",
    "max_age",
    "users",
    "groups",
    "roles",
}


def _rule(r: Reader, i: int, entry: Any, levels: Levels) -> Rule | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    w = f"policy.rules[{i}]" + (f" ({name})" if isinstance(name, str) else "")
    if entry is None:
        # "- " with nothing after it: dropping it would shift first-match order.
        r.error(w, "empty rule (a `-` with nothing after it)")
        return None
    d = r.mapping(entry, w, _RULE_KEYS)
    if not d:
        if isinstance(entry, dict):
            r.error(w, "empty rule")
        return None
    before = len(r.problems)
    hosts = []
    for j, h in enumerate(r.str_list(d, "hosts", w) or []):
        hl = h.lower().rstrip(".")
        if not _HOST_RE.match(hl):
            r.error(f"{w}.hosts[{j}]", f"must be a host name or *.domain, got {show(h)}")
        hosts.append(hl)
    paths = []
    for j, p in enumerate(r.str_list(d, "paths", w) or []):
        try:
            paths.append(PathPattern.parse(p))
        except ValueError as exc:
            r.error(f"{w}.paths[{j}]", str(exc))
    methods = r.str_list(d, "methods", w)
    if methods is not None:
        methods = [m.upper() for m in methods]
        for j, m in enumerate(methods):
            if m not in METHODS:
                r.error(f"{w}.methods[{j}]", f"unknown HTTP method {show(m)}")
    networks = r.networks(d, "networks", w) or ()

    has = [k for k in ("allow", "deny", "level", "methods_levels") if k in d]
    if len(has) != 1:
        r.error(w, "must say exactly one of `allow: anonymous`, `deny: true`, `level: NAME`, `methods_levels`"
                + (f" (has {', '.join(has)})" if has else ""))
        return None
    action, level = Action.LEVEL, None
    mlevels: tuple[tuple[str, str], ...] = ()
    if "allow" in d:
        if d["allow"] != "anonymous":
            r.error(f"{w}.allow", f"the only allowed value is anonymous, got {show(d['allow'])}")
        action = Action.ANONYMOUS
    elif "deny" in d:
        if d["deny"] is not True:
            r.error(f"{w}.deny", f"must be true, got {show(d['deny'])}")
        action = Action.DENY
    elif "level" in d:
        level = d["level"]
        if not isinstance(level, str):
            r.error(f"{w}.level", f"must be one level name (levels: {', '.join(levels.names)}), got {show(level)}")
        elif level not in levels:
            r.error(f"{w}.level", f"unknown level {show(level)} (levels: {', '.join(levels.names)})")
    else:
        ml = d["methods_levels"]
        if not isinstance(ml, dict) or not ml:
            r.error(f"{w}.methods_levels", "must map HTTP methods to level names")
        else:
            pairs = []
            for m, lv in ml.items():
                mu = str(m).upper()
                if mu not in METHODS:
                    r.error(f"{w}.methods_levels.{m}", f"unknown HTTP method {show(m)}")
                if not isinstance(lv, str):
                    r.error(f"{w}.methods_levels.{m}", f"must be one level name, got {show(lv)}")
                elif lv not in levels:
                    r.error(f"{w}.methods_levels.{m}", f"unknown level {show(lv)}")
                pairs.append((mu, lv))
            mlevels = tuple(pairs)
    max_age = r.duration(d, "max_age", w, None)
    users = r.str_list(d, "users", w)
    groups = r.str_list(d, "groups", w)
    roles = r.str_list(d, "roles", w)
    if roles:
        groups = (groups or []) + roles
    if action is not Action.LEVEL:
        for k in ("max_age", "users", "groups", "roles"):
            if k in d:
                r.error(f"{w}.{k}", f"only applies to rules with a level (this rule says {action.value})")
    if len(r.problems) > before:
        return None
    return Rule(
        index=i,
        hosts=tuple(hosts),
        paths=tuple(paths),
        methods=frozenset(methods) if methods is not None else None,
        networks=tuple(networks),
        action=action,
        level=level,
        methods_levels=mlevels,
        max_age=max_age,
        users=frozenset(users) if users else None,
        groups=frozenset(groups) if groups else None,
        name=name if isinstance(name, str) else None,
    )
