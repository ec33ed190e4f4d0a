"""Headers from the client that an app may trust never reach the app, through each
shipped proxy config; and a client's Connection header cannot make a proxy drop
the identity headers forwardauth set."""

from __future__ import annotations

import json
import re
import socket

import pytest

from harness.proxies import PROXIES
from harness.rawhttp import RawClient
from harness.stack import USERS

pytestmark = pytest.mark.proxy

# Stripped by every shipped config (README, "Wiring a proxy").
STRIPPED = {
    "X-Forwarded-User": "admin", "X-Forwarded-Email": "admin@evil.test", "X-Forwarded-Groups": "admins",
    "X-Forwarded-Preferred-Username": "admin", "X-Auth-Request-Preferred-Username": "admin",
    "X-Auth-Request-Access-Token": "forged", "X-Original-URL": "/admin/x", "X-Rewrite-URL": "/admin/x",
    "X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "X-Method-Override": "DELETE",
    "X-Forwardauth-Location": "https://evil.test/", "X-Forwardauth-Required-Level": "none",
    "X-Forwardauth-Status": "200", "X-Forwardauth-Error": "forged", "X-Forwardauth-Set-Cookie": "a=b",
}
# The same names as CGI/WSGI-style apps read them ("_" or "." for "-").
ALIASES = {re.sub("-", sep, name): value for name, value in STRIPPED.items() for sep in ("_", ".")}
IDENTITY = ("X-Auth-Request-User", "Remote-User", "X-Auth-Request-Groups", "Remote-Groups",
            "X-Auth-Request-Level", "X-Auth-Request-Email", "Remote-Email")
APP = "aiohttp"


def seen_by_app(body: dict) -> dict[str, list[str]]:
    """Headers the app got, by name with "_" and "." read as "-" (as CGI would), lower case."""
    out: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        out.setdefault(re.sub(r"[_.]", "-", name.lower()), []).append(value)
    return out


def through(stack, proxy: str, target: str, cred: str, headers: dict | list, method: str = "GET") -> dict:
    running = stack.proxy(proxy, APP)
    items = list(stack.creds[cred].items()) + (list(headers.items()) if isinstance(headers, dict) else headers)
    client = RawClient(running.port)
    try:
        reply = client.request(target, stack.host(running), items, method=method)
    finally:
        client.close()
    assert reply.status == 200 and reply.body.startswith(b"{"), reply
    return json.loads(reply.body)


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("cred, target", [("none", "/public/x"), ("password", "/app/x"), ("token", "/app/x")])
@pytest.mark.parametrize("names", ["canonical", "aliases"])
def test_client_headers_an_app_may_trust_never_reach_it(stack, proxy, cred, target, names):
    sent = STRIPPED if names == "canonical" else ALIASES
    body = through(stack, proxy, target, cred, sent)
    leaked = {k: v for k, v in seen_by_app(body).items() if k in {n.lower() for n in STRIPPED}}
    assert leaked == {}, f"{proxy} passed on {leaked}"
    assert body["user"] == (None if cred == "none" else USERS[cred])


@pytest.mark.parametrize("proxy", PROXIES)
def test_method_override_is_stripped_from_a_post(stack, proxy):
    """A POST the app would run as DELETE: the override is removed, not judged."""
    body = through(stack, proxy, "/app/x", "password",
                   {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "PUT", "X-Method-Override": "PATCH",
                    "Content-Length": "0"}, method="POST")
    assert not {"x-http-method-override", "x-http-method", "x-method-override"} & set(seen_by_app(body))


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("connection", [
    "X-Auth-Request-User, Remote-User",
    "keep-alive, X-Auth-Request-User, Remote-User, X-Auth-Request-Groups, Remote-Groups, X-Auth-Request-Level",
    "x-auth-request-user,remote-user,x-auth-request-email,remote-email",
])
def test_connection_tokens_do_not_remove_the_identity_headers(stack, proxy, connection):
    body = through(stack, proxy, "/app/x", "password", [("Connection", connection)])
    seen = seen_by_app(body)
    got = {name: seen.get(name.lower()) for name in IDENTITY}
    assert got["X-Auth-Request-User"] == [USERS["password"]] and got["Remote-User"] == [USERS["password"]], (
        f"{proxy}: Connection: {connection} left the app with {got}")
    assert got["X-Auth-Request-Level"] == ["password"], got


@pytest.mark.parametrize("proxy", PROXIES)
def test_connection_tokens_cannot_smuggle_a_forged_identity(stack, proxy):
    """The client names the real header in Connection and sends a forged alias: neither wins."""
    body = through(stack, proxy, "/app/x", "password",
                   [("Connection", "X-Auth-Request-User"), ("X-Auth-Request-User", "admin"),
                    ("X_Auth_Request_User", "admin")])
    assert seen_by_app(body).get("x-auth-request-user") == [USERS["password"]], body["headers"]


@pytest.mark.parametrize("proxy", ["traefik", "caddy"])
def test_websocket_upgrade_still_works_with_the_identity(stack, proxy):
    """Dropping the client's Connection tokens keeps "Upgrade" (the nginx examples
    do not proxy WebSockets: they send the app "Connection: " empty)."""
    running = stack.proxy(proxy, APP)
    head = [("Connection", "Upgrade, X-Auth-Request-User"), ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as conn:
        lines = ["GET /app/ws HTTP/1.1", f"Host: {stack.host(running)}",
                 *(f"{k}: {v}" for k, v in [*stack.creds["password"].items(), *head])]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"user=" not in data or data.index(b"user=") + 5 + len(USERS["password"]) > len(data):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), data
    assert f"user={USERS['password']}".encode() in data, data
