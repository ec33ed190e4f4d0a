"""Path spellings x {nginx, Traefik, Caddy} x {aiohttp, Flask, cleaner} x {no cookie,
password cookie, token limited to /app/}: the app never serves a route that
needs more than the credential sent.

What a route needs is decided by the app's own answer (which route it
served), not by what forwardauth or the proxy thought the path was: that is
the whole point. A request the proxy or forwardauth refuses never reaches
the app and is fine here; the refusal's own answer is tested in
test_refusals. Control cases prove each route does serve when allowed, so
"nothing was served" cannot pass for "nothing was let through".
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.apps import KINDS
from harness.corpus import PAIRS_FOR, spellings
from harness.proxies import PROXIES
from harness.rawhttp import RawClient, RawReply
from harness.stack import USERS

pytestmark = pytest.mark.proxy

# What each route the apps report needs; a token limited to /app/ reaches /app/ only.
RANK = {"none": 0, "password": 1, "mfa": 2}
NEEDS = {"public": 0, "app": 1, "other": 1, "admin": 2}
TOKEN_ROUTES = {"public", "app"}
WORKERS = 6


def allowed(cred: str, route: str) -> bool:
    if route == "blocked":
        return False
    if cred == "token":
        return route in TOKEN_ROUTES
    return NEEDS[route] <= RANK[cred]


def served(reply: RawReply, app: str) -> dict | None:
    """The app's answer (which route it served), or None when the app did not answer."""
    if reply.status != 200 or not reply.body.startswith(b"{"):
        return None
    body = json.loads(reply.body)
    return body if body.get("app") == app else None


def send_all(port: int, host: str, jobs: list[tuple[str, str, dict]]) -> list[RawReply | Exception]:
    """Each (cred, target, headers) once, over WORKERS kept-alive connections."""
    local = threading.local()

    def one(job: tuple[str, str, dict]) -> RawReply | Exception:
        if not hasattr(local, "client"):
            local.client = RawClient(port)
        try:
            return local.client.request(job[1], host, job[2])
        except Exception as exc:  # noqa: BLE001 - a proxy that closes on a bad request line: not the app
            local.client.close()
            return exc

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, jobs))


def cases() -> list[tuple[str, str, str]]:
    """(cred, spelling name, target) for every credential and its pairs."""
    return [(cred, name, target) for cred, pairs in PAIRS_FOR.items() for name, target in spellings(pairs)]


@pytest.mark.parametrize("app", KINDS)
@pytest.mark.parametrize("proxy", PROXIES)
def test_no_spelling_reaches_a_route_the_credential_does_not_allow(stack, proxy, app):
    running = stack.proxy(proxy, app)
    todo = cases()
    started = time.monotonic()
    replies = send_all(running.port, stack.host(running), [(c, t, stack.creds[c]) for c, _, t in todo])
    elapsed = time.monotonic() - started
    violations: dict[str, list[str]] = defaultdict(list)
    for (cred, name, target), reply in zip(todo, replies, strict=True):
        if isinstance(reply, Exception):
            continue
        body = served(reply, app)
        if body is not None and not allowed(cred, body["route"]):
            violations[name.split(":")[0]].append(f"{cred}: {target!r} -> app served {body['route']} "
                                                  f"(user {body['user']!r}, app saw {body['raw']!r})")
    report = "\n".join(f"{template} ({len(v)}):\n    " + "\n    ".join(v) for template, v in sorted(violations.items()))
    assert not violations, (f"{proxy} in front of {app}: {sum(map(len, violations.values()))} of {len(todo)} "
                            f"requests reached a route the credential does not allow ({elapsed:.1f}s)\n{report}")


CONTROLS = [
    # (cred, target, route the app must serve, or None: must not reach the app)
    ("none", "/public/x", "public"),
    ("none", "/app/x", None),
    ("none", "/admin/x", None),
    ("none", "/secret/x", None),
    ("password", "/app/x", "app"),
    ("password", "/secret/x", "other"),
    ("password", "/public/x", "public"),
    ("password", "/admin/x", None),
    ("mfa", "/admin/x", "admin"),
    ("mfa", "/app/x", "app"),
    ("mfa", "/blocked/x", None),
    ("token", "/app/x", "app"),
    ("token", "/app/deeper/y?q=1", "app"),
    ("token", "/admin/x", None),
    ("token", "/secret/x", None),
    ("token", "/blocked/x", None),
]


@pytest.mark.parametrize("app", KINDS)
@pytest.mark.parametrize("proxy", PROXIES)
def test_controls_each_route_serves_exactly_when_allowed(stack, proxy, app):
    running = stack.proxy(proxy, app)
    replies = send_all(running.port, stack.host(running), [(c, t, stack.creds[c]) for c, t, _ in CONTROLS])
    wrong = []
    for (cred, target, route), reply in zip(CONTROLS, replies, strict=True):
        body = None if isinstance(reply, Exception) else served(reply, app)
        got = body and body["route"]
        if got != route:
            wrong.append(f"{cred} {target}: expected {route or 'no app answer'}, got {got or reply!r}")
        elif body and route != "public" and body["user"] != USERS[cred]:
            wrong.append(f"{cred} {target}: the app got user {body['user']!r}, not {USERS[cred]!r}")
        elif body and route == "public" and body["user"] is not None:
            wrong.append(f"{cred} {target}: an anonymous route got user {body['user']!r}")
    assert not wrong, f"{proxy} in front of {app}:\n" + "\n".join(wrong)
