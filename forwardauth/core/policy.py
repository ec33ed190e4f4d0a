"""Route policy: ordered rules, first match wins, indexed by host.

A request is matched only against the rules that can apply to its host (exact
host rules, wildcard rules for each parent domain, and host-less rules),
merged back into file order, so thousands of rules cost a dictionary lookup
plus the few rules of that host, not a scan of the whole file.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from forwardauth.core.lru import Lru
from forwardauth.core.shown import show


class Action(str, Enum):
    ANONYMOUS = "anonymous"
    DENY = "deny"
    LEVEL = "level"


@dataclass(frozen=True)
class PathPattern:
    """One entry of a rule's `paths`: a segment-aware prefix, a glob or a regex."""

    source: str
    kind: str  # "prefix" | "glob" | "regex"
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Raises ValueError naming what is wrong with the pattern.

        The same text gives the same (immutable) object: a generated policy
        repeats its patterns (`/api/**` for each of 2,500 hosts), so each is
        compiled once and held once (_parsed, bounded)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"path pattern must be a non-empty string, got {show(text)}")
        return _parsed(text)

    @classmethod
    def _parse(cls, text: str) -> PathPattern:
        if text.startswith("re:"):
            try:
                return cls(text, "regex", re.compile(text[3:]))
            except re.error as exc:
                raise ValueError(f"invalid regular expression {text[3:]!r}: {exc}") from None
        if not text.startswith("/"):
            raise ValueError(f"path pattern must start with '/' or 're:', got {text!r}")
        if any(c in text for c in "*?["):
            try:
                return cls(text, "glob", _glob_to_regex(text))
            except re.error as exc:
                raise ValueError(f"invalid glob {text!r}: {exc.msg}") from None
        return cls(text, "prefix")

    def matches(self, path: str) -> bool:
        if self.kind == "prefix":
            p = self.source
            if p.endswith("/"):
                return path.startswith(p) or path == p[:-1]
            return path == p or path.startswith(p + "/")
        assert self.regex is not None
        if self.kind == "regex":
            return self.regex.match(path) is not None
        return self.regex.fullmatch(path) is not None


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> PathPattern:
    return PathPattern._parse(text)


def _glob_to_regex(glob: str) -> re.Pattern[str]:
    """`*` stays inside one segment, `**` crosses segments, `?` is one character."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = glob.find("]", i + 1)
            if j == -1:
                raise ValueError(f"unclosed '[' in glob {glob!r}")
            body = glob[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Rule:
    """One policy rule, validated. `index` is its position in the file (0-based)."""

    index: int
    hosts: tuple[str, ...] = ()
    paths: tuple[PathPattern, ...] = ()
    methods: frozenset[str] | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    action: Action = Action.DENY
    level: str | None = None
    methods_levels: tuple[tuple[str, str], ...] = ()
    max_age: float | None = None
    users: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"rules[{self.index}]" + (f" ({self.name})" if self.name else "")

    def required_level(self, method: str) -> str | None:
        """The level this rule needs for `method`; None when the method is not allowed."""
        if self.methods_levels:
            return dict(self.methods_levels).get(method)
        return self.level

    def mismatch(self, host: str, path: str, method: str, client: ipaddress._BaseAddress | None) -> str | None:
        """Why this rule does not match, or None when it does (used by explain)."""
        if self.hosts and not any(host_matches(h, host) for h in self.hosts):
            return f"host {host!r} is not one of {list(self.hosts)}"
        if self.paths and not any(p.matches(path) for p in self.paths):
            return f"path {path!r} matches none of {[p.source for p in self.paths]}"
        if self.methods is not None and method not in self.methods:
            return f"method {method} is not one of {sorted(self.methods)}"
        if self.networks:
            if client is None or not any(client in n for n in self.networks):
                return f"client {client} is in none of {[str(n) for n in self.networks]}"
        return None

    def matches(self, host: str, path: str, method: str, client: ipaddress._BaseAddress | None) -> bool:
        return self.test(host, path, method, client)

    def __getstate__(self) -> dict[str, object]:
        """Pickled (to a spawned worker) without the compiled test: a closure does not pickle."""
        return {k: v for k, v in self.__dict__.items() if k != "_test"}

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickled in Python, not C, on purpose: a reload unpickles the new
        config on a thread beside the event loop, and only between Python
        bytecodes can the loop take the GIL back (see web/context.py)."""
        self.__dict__.update(state)

    @property
    def test(self) -> Test:
        """`matches` as one function made for this rule's patterns (`compile_test`), made once."""
        t: Test | None = self.__dict__.get("_test")
        if t is None:
            t = compile_test(self)
            object.__setattr__(self, "_test", t)
        return t


Test = Callable[[str, str, str, "ipaddress._BaseAddress | None"], bool]


def compile_test(rule: Rule) -> Test:
    """One function that answers exactly what these checks answer, in any order
    (each is a pure predicate):

        paths: any(p.matches(path) for p in rule.paths), when there are paths;
        methods: method in rule.methods, when given;
        networks: client in one of them, when given (no client: no match);
        hosts: any(host_matches(h, host) ...), when given (the policy's
               per-host index already guarantees it; kept for direct callers).

    Segment-aware prefixes become one `str.startswith` over a tuple plus a set
    of exact paths (`/a/` matches `/a/...` and `/a`; `/a` matches `/a` and
    `/a/...`), globs and regexes their compiled patterns' fullmatch/match:
    no generator and no per-pattern call on a decision
    (tests/unit/test_policy.py compares it with PathPattern.matches)."""
    starts: list[str] = []
    exact: set[str] = set()
    others: list[Callable[[str], re.Match[str] | None]] = []
    for p in rule.paths:
        if p.kind == "prefix":
            if p.source.endswith("/"):
                starts.append(p.source)
                exact.add(p.source[:-1])
            else:
                starts.append(p.source + "/")
                exact.add(p.source)
        else:
            assert p.regex is not None
            others.append(p.regex.match if p.kind == "regex" else p.regex.fullmatch)
    any_path = not rule.paths
    prefixes = tuple(starts)
    regexes = tuple(others)
    methods = rule.methods
    networks = rule.networks
    hosts = rule.hosts
    plain_hosts = frozenset(h for h in hosts if not h.startswith("*."))
    wild_hosts = tuple(h for h in hosts if h.startswith("*."))

    def test(host: str, path: str, method: str, client: ipaddress._BaseAddress | None) -> bool:
        if not any_path and not (path in exact or path.startswith(prefixes)):
            for r in regexes:
                if r(path) is not None:
                    break
            else:
                return False
        if methods is not None and method not in methods:
            return False
        if networks and (client is None or not any(client in n for n in networks)):
            return False
        return not hosts or host in plain_hosts or any(host_matches(h, host) for h in wild_hosts)

    return test


def host_matches(pattern: str, host: str) -> bool:
    """`*.example.com` matches one or more labels below example.com, not example.com itself."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: Action = Action.DENY
    _exact: dict[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False, compare=False)
    _wild: dict[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False, compare=False)
    _any: tuple[Rule, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, rules: Iterable[Rule], default: Action = Action.DENY) -> Policy:
        rules = tuple(rules)
        exact: dict[str, list[Rule]] = {}
        wild: dict[str, list[Rule]] = {}
        any_host: list[Rule] = []
        for r in rules:
            if not r.hosts:
                any_host.append(r)
                continue
            for h in dict.fromkeys(r.hosts):
                if h.startswith("*."):
                    wild.setdefault(h[1:], []).append(r)
                else:
                    exact.setdefault(h, []).append(r)
        p = cls(
            rules,
            default,
            {k: tuple(v) for k, v in exact.items()},
            {k: tuple(v) for k, v in wild.items()},
            tuple(any_host),
        )
        object.__setattr__(p, "_cache", Lru(4096))
        return p

    def __getstate__(self) -> dict[str, object]:
        """Pickled (to a spawned worker) without the per-host cache of compiled tests."""
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.__dict__["_cache"] = Lru(4096)

    @property
    def cache(self) -> Lru:
        """Per host, its candidate rules and their tests (least recently used out): a cache."""
        return self._cache  # type: ignore[attr-defined]

    def candidates(self, host: str) -> tuple[Rule, ...]:
        """The rules that may apply to `host`, in file order (memoised per host)."""
        return tuple(r for r, _ in self._tests(host))

    def _tests(self, host: str) -> tuple[tuple[Rule, Test], ...]:
        """The candidates of `host` with their tests (memoised per host, least recently used out)."""
        cache: Lru = self._cache  # type: ignore[attr-defined]
        found = cache.get(host)
        if found is None:
            found = tuple((r, r.test) for r in self._gather(host))
            cache.put(host, found)
        else:
            cache.move_to_end(host)
        return found

    def _gather(self, host: str) -> Iterator[Rule]:
        lists: list[tuple[Rule, ...]] = []
        if host in self._exact:
            lists.append(self._exact[host])
        dot = host.find(".")
        while dot != -1:
            suffix = host[dot:]
            if suffix in self._wild:
                lists.append(self._wild[suffix])
            dot = host.find(".", dot + 1)
        lists.append(self._any)
        seen: set[int] = set()
        for r in heapq.merge(*lists, key=lambda r: r.index):
            if r.index not in seen:
                seen.add(r.index)
                yield r

    def match(self, host: str, path: str, method: str, client: ipaddress._BaseAddress | None) -> Rule | None:
        """The first rule that matches, or None (then `default` applies)."""
        for r, test in self._tests(host):
            if test(host, path, method, client):
                return r
        return None

    def explain(
        self, host: str, path: str, method: str, client: ipaddress._BaseAddress | None
    ) -> tuple[Rule | None, list[tuple[Rule, str]]]:
        """The matching rule and, for each earlier candidate, why it did not match."""
        skipped: list[tuple[Rule, str]] = []
        for r in self.candidates(host):
            why = r.mismatch(host, path, method, client)
            if why is None:
                return r, skipped
            skipped.append((r, why))
        return None, skipped
