"""In-process properties: any path forwardauth accepts is judged at least as strictly
as the route each of the three apps (harness.apps: aiohttp's router, Werkzeug's
map, a Go-style cleaning file server; and that cleaner folding case) takes for it.

No servers: the request is parsed as /auth/traefik parses it
(forwardauth.request.headers_forwarded), decided by forwardauth.decision.decide
(which judges every reading in req.paths and returns the strictest), and the
apps' routes come from the same code their servers run (test_apps checks the
servers against it). Refusing a path is always safe; allowing one is safe only
if every app's route allows the same credential.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forwardauth.composition import parse_config
from forwardauth.core import request as fa_request
from forwardauth.core.decision import decide
from forwardauth.core.session import Session
from harness.apps import KINDS, route_of
from harness.corpus import CONTROL_PATHS, spellings

# The three apps, plus the cleaner on a case-insensitive file system (or an
# Express/ASP.NET-style router): "/ADMIN/x" is its /admin/x.
MODELS = (*KINDS, "cleaner-folding")

NOW = 1_800_000_000.0
CONFIG = parse_config("""
server: {listen: 127.0.0.1:4180, public_url: https://auth.example.com, trusted_proxies: [127.0.0.1/32]}
session: {cookie_name: fa, secure: false, lifetime: 1h, idle_timeout: 10m}
keys: {inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]}
state: memory://
levels:
  - {name: password, acr: ["urn:acr:pwd"]}
  - {name: mfa, acr: ["urn:acr:mfa"]}
policy:
  default: deny
  rules:
    - {paths: [/public/], allow: anonymous}
    - {paths: [/admin/], level: mfa}
    - {paths: [/blocked/], deny: true}
    - {paths: [/app/], level: password}
    - {level: password}
""", "properties.yaml")
PEER = ipaddress.ip_address("127.0.0.1")
TRUSTED = (ipaddress.ip_network("127.0.0.1/32"),)
RANK = {"none": 0, "password": 1, "mfa": 2}
NEEDS = {"public": 0, "app": 1, "other": 1, "admin": 2, "blocked": 3, "redirect": 0, "refused": 0}
SESSIONS = {
    "none": None,
    "password": Session("s1", "pat", "password", {"password": NOW}, NOW - 100, NOW + 3600, NOW),
    "mfa": Session("s2", "mo", "mfa", {"mfa": NOW, "password": NOW}, NOW - 100, NOW + 3600, NOW),
}

SEGMENTS = ["admin", "public", "blocked", "app", "x", "", ".", "..", "...", "%2e", "%2E", "%2e%2e", "%2E%2e",
            ".%2e", "%2e.", "..;", "..;x", ";x", "admin;x", "public;", "ADMIN", "Public", "%61dmin", "%70ublic",
            "%252e%252e", "%c0%ae%c0%ae", "admin.", "public%20", "%00", "x%09", "caf%C3%A9", "\u00e9", "%ff"]
SEPARATORS = ["/", "/", "/", "//", "%2f", "%2F", "\\", "%5c", "%5C", "%252f", "#", "%23", "?", "%3f", ";", "/./"]


def paths() -> st.SearchStrategy[str]:
    """Raw request targets built from the pieces bypasses are made of, plus free text."""
    pieces = st.lists(st.tuples(st.sampled_from(SEPARATORS), st.sampled_from(SEGMENTS)), min_size=1, max_size=6)
    built = pieces.map(lambda ps: "/" + "".join(sep + seg for sep, seg in ps)[1:])
    free = st.text(st.sampled_from("/.%2eEfF5cC;#?\\adminpubl x0"), max_size=24).map(lambda t: "/" + t)
    return st.one_of(built, free)


def parse(raw: str):
    """The request as /auth/traefik would see it, or None when forwardauth refuses it."""
    try:
        return fa_request.headers_forwarded(
            {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com",
             "X-Forwarded-Uri": raw}, PEER, TRUSTED)
    except fa_request.BadRequest:
        return None


def judged_too_leniently(raw: str) -> list[str]:
    """Each (credential, app) for which forwardauth allows `raw` but the app's route needs more."""
    req = parse(raw)
    if req is None:
        return []
    out = []
    for cred, session in SESSIONS.items():
        if not decide(req, session, CONFIG.policy, CONFIG.levels, NOW).allowed:
            continue
        for kind in MODELS:
            route = route_of(kind, raw)
            if NEEDS[route] > RANK[cred]:
                out.append(f"{cred} allowed, {kind} routes {route}")
    return out


def policy_need(path: str) -> int:
    """What the test policy needs for one reading (segment-aware prefixes, as forwardauth's)."""
    for prefix, need in (("/public", 0), ("/admin", 2), ("/blocked", 3), ("/app", 1)):
        if path == prefix or path.startswith(prefix + "/"):
            return need
    return 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths())
@example("/admin/..%2fpublic/x")
@example("/public/x#/../../admin/x")
@example("/admin/..;/public/x")
@example("/public/%2e%2e/blocked/x")
@example("/ADMIN/x")
@example("/public%2f..%2fadmin/x")
def test_an_accepted_path_is_judged_at_least_as_strictly_as_every_app_routes_it(raw):
    assert judged_too_leniently(raw) == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths())
@example("/admin/../public/x")
@example("/public%2f..%2fadmin/x")
def test_path_readings_cover_every_app(raw):
    """path_readings: refused (AmbiguousPath, a BadRequest), or readings whose strictest
    need is at least the need of each app's route; the first is normalise_path's."""
    path = raw.split("?", 1)[0]
    try:
        readings = fa_request.path_readings(path)
    except fa_request.BadRequest:
        return
    assert readings and readings[0] == fa_request.normalise_path(path)
    strictest = max(policy_need(r) for r in readings)
    for kind in MODELS:
        route = route_of(kind, raw)
        assert NEEDS[route] <= strictest, f"{kind} routes {route}; readings {readings}"


def test_ambiguous_path_is_a_bad_request():
    assert issubclass(fa_request.AmbiguousPath, fa_request.BadRequest)
    with pytest.raises(fa_request.AmbiguousPath):
        fa_request.path_readings("/admin/../public/x")


@pytest.mark.parametrize("raw", CONTROL_PATHS)
def test_plain_paths_are_accepted_with_one_reading(raw):
    assert fa_request.path_readings(raw) == (raw,)
    assert parse(raw).paths == (raw,)


def test_no_corpus_spelling_is_judged_too_leniently():
    """The proxy matrix's corpus, in-process (and without any proxy's own cleaning)."""
    found = {f"{name} {target!r}": bad for name, target in spellings() if (bad := judged_too_leniently(target))}
    assert not found, "\n".join(f"{k}: {v}" for k, v in found.items())
