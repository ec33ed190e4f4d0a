"""Request-target spellings that one reader routes as one path and another reader as another.

Each template `t(a, b)` is a target that a naive reader (or one of the apps)
sees under `/a/` while another reader sees under `/b/`. Every template is
used both ways round for the pairs in PAIRS, so for `/public/` vs `/admin/`
the corpus has `/admin/../public/x` (an app that keeps dot segments routes
admin, a cleaner routes public) and `/public/../admin/x` (the opposite).

Sources, besides the classes in issue 9:
- Authelia CVE-2021-32637: a malformed request URI behind nginx auth_request
  was answered 200 (bad escapes: `%zz`, a lone `%`);
- Pomerium CVE-2023-33189 and Ory Oathkeeper (rules matched on another path
  than the one served): encoded slashes and dots, `..%2f`, `%2e%2e`;
- oauth2-proxy GHSA-7rh7-c77v-6434 (a path rule matched against path+query:
  `/admin?/public/`), GHSA-pxq7-h93f-9jrg (`#` read as a fragment by one
  side only) and CVE-2026-40575 (X-Forwarded-Uri, see the header tests);
- heimdall GHSA-3q34-rx83-r6mq / Keycloak (`%2e%2e`, `%2E%2E`, `%2e%2e%2f`),
  nitro GHSA-5w89-w975-hf9q (`%2f`/`%5c` at any `%25` depth);
- Tomcat/Spring `..;/`, IIS `%u002e`, overlong UTF-8 `%c0%ae`.
"""

from __future__ import annotations

from collections.abc import Callable

Template = Callable[[str, str], str]

# (a, b): each is a first path segment; "secret" is a route no rule names
# (the catch-all: password), "app" the one a restricted token may reach.
# Per credential, the pairs where a misreading would give it more than it
# has: no cookie from /public/ into /admin/ and the denied /blocked/; a
# password cookie from /app/ into both; a token limited to /app/ into
# /admin/ and the catch-all.
PAIRS_FOR = {
    "none": (("admin", "public"), ("blocked", "public")),
    "password": (("admin", "app"), ("blocked", "app")),
    "token": (("admin", "app"), ("secret", "app")),
}
PAIRS = tuple(dict.fromkeys(p for pairs in PAIRS_FOR.values() for p in pairs))

TEMPLATES: dict[str, Template] = {
    # dot segments, raw and encoded in every case
    "dotdot": lambda a, b: f"/{a}/../{b}/x",
    "dotdot-deep": lambda a, b: f"/{a}/x/y/../../../{b}/x",
    "dot-dotdot": lambda a, b: f"/{a}/./../{b}/x",
    "dotdot-trailing": lambda a, b: f"/{b}/x/../../{a}/..",
    "pct2e2e": lambda a, b: f"/{a}/%2e%2e/{b}/x",
    "pct2E2E": lambda a, b: f"/{a}/%2E%2E/{b}/x",
    "dot-pct2e": lambda a, b: f"/{a}/.%2e/{b}/x",
    "pct2E-dot": lambda a, b: f"/{a}/%2E./{b}/x",
    "pct2e-single": lambda a, b: f"/{a}/%2e/../{b}/x",
    "root-pct2e2e": lambda a, b: f"/%2e%2e/{a}/x",
    # encoded separators next to dot segments
    "dotdot-pct2f": lambda a, b: f"/{a}/..%2f{b}/x",
    "dotdot-pct2F": lambda a, b: f"/{a}/..%2F{b}/x",
    "pct2e2e2f": lambda a, b: f"/{a}/%2e%2e%2f{b}/x",
    "all-encoded": lambda a, b: f"/{a}%2f%2e%2e%2f{b}%2fx",
    "dotdot-pct5c": lambda a, b: f"/{a}/..%5c{b}/x",
    "dotdot-pct5C": lambda a, b: f"/{a}/..%5C{b}/x",
    "pct2e2e5c": lambda a, b: f"/{a}/%2e%2e%5c{b}/x",
    "dotdot-backslash": lambda a, b: f"/{a}/..\\{b}/x",
    "backslash-all": lambda a, b: f"/{a}\\..\\{b}\\x",
    "dotdot-pct2f-twice": lambda a, b: f"/{a}/x/..%2f..%2f{b}/x",
    # path parameters
    "dotdot-semicolon": lambda a, b: f"/{a}/..;/{b}/x",
    "dotdot-params": lambda a, b: f"/{a}/..;x=1/{b}/x",
    "param-dotdot": lambda a, b: f"/{a};x=1/../{b}/x",
    "param-segment": lambda a, b: f"/{a};/{b}/x",
    "root-semicolon": lambda a, b: f"/..;/{a}/x",
    # double encoding, overlong UTF-8, IIS %u
    "double-2e": lambda a, b: f"/{a}/%252e%252e/{b}/x",
    "double-2f": lambda a, b: f"/{a}/..%252f{b}/x",
    "triple-2f": lambda a, b: f"/{a}/..%25252f{b}/x",
    "double-5c": lambda a, b: f"/{a}/..%255c{b}/x",
    "overlong-dot": lambda a, b: f"/{a}/%c0%ae%c0%ae/{b}/x",
    "overlong-slash": lambda a, b: f"/{a}/..%c0%af{b}/x",
    "iis-u002e": lambda a, b: f"/{a}/%u002e%u002e/{b}/x",
    "iis-u2215": lambda a, b: f"/{a}/..%u2215{b}/x",
    # fragments and queries, raw and encoded
    "hash-dotdot": lambda a, b: f"/{b}/x#/../../{a}/x",
    "hash-encoded": lambda a, b: f"/{b}/x%23/../../{a}/x",
    "hash-suffix": lambda a, b: f"/{a}/x#/{b}/",
    "query-dotdot": lambda a, b: f"/{b}/x?/../../{a}/x",
    "query-encoded": lambda a, b: f"/{b}/x%3f/../../{a}/x",
    "query-suffix": lambda a, b: f"/{a}/x?/{b}/",
    "query-param": lambda a, b: f"/{a}/x?next=/{b}/x",
    # slashes
    "double-slash-lead": lambda a, b: f"//{a}/x",
    "double-slash-dotdot": lambda a, b: f"/{b}//../{a}/x",
    "triple-slash": lambda a, b: f"///{a}//x",
    "pct2f-only": lambda a, b: f"/{a}%2fx",
    "pct2f-lead": lambda a, b: f"/%2f{a}/x",
    "pct5c-only": lambda a, b: f"/{a}%5cx",
    # control characters, spaces, trailing dots
    "nul": lambda a, b: f"/{a}%00/x",
    "nul-dotdot": lambda a, b: f"/{b}/..%00/{a}/x",
    "tab": lambda a, b: f"/{a}%09/x",
    "newline": lambda a, b: f"/{a}%0a/x",
    "space": lambda a, b: f"/{a}%20/x",
    "trailing-dot": lambda a, b: f"/{a}./x",
    "trailing-dots": lambda a, b: f"/{a}../x",
    "three-dots": lambda a, b: f"/{a}/.../{b}/x",
    # malformed escapes (Authelia CVE-2021-32637)
    "bad-escape": lambda a, b: f"/{a}/%zz/x",
    "lone-percent": lambda a, b: f"/{a}/x%",
    "half-escape": lambda a, b: f"/{a}/%2/x",
    # letters: encoded, case, look-alikes
    "encoded-letter": lambda a, b: f"/%{ord(a[0]):02x}{a[1:]}/x",
    "upper": lambda a, b: f"/{a.upper()}/x",
    "title": lambda a, b: f"/{a.title()}/x",
    "fullwidth": lambda a, b: f"/%ef%bc%{0xa1 + ord(a[0]) - ord('a'):02x}{a[1:]}/x",
    "zero-width": lambda a, b: f"/{a}%e2%80%8b/x",
}

# Targets with raw bytes no client library would send (sent as they are).
RAW = {
    "raw-nul": lambda a, b: f"/{a}\x00/x",
    "raw-space": lambda a, b: f"/{b}/x /../../{a}/x",
    "raw-tab": lambda a, b: f"/{b}/x\t/../{a}/x",
    "raw-utf8": lambda a, b: f"/{a}/caf\u00e9/../../{b}/x",
}

CONTROL_PATHS = ("/public/x", "/admin/x", "/blocked/x", "/app/x", "/secret/x")


def spellings(pairs: tuple[tuple[str, str], ...] = PAIRS) -> list[tuple[str, str]]:
    """(name, target) for every template and pair, both ways round, without duplicates."""
    out: dict[str, str] = {}
    for name, template in {**TEMPLATES, **RAW}.items():
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                target = template(x, y)
                out.setdefault(target, f"{name}:{x}>{y}")
    return [(name, target) for target, name in out.items()]


def template_names() -> list[str]:
    return [*TEMPLATES, *RAW]
