"""forwardauth's refusal to judge a request reaches the client as a 400 with a short
plain body through every shipped proxy config, and a 403 stays a 403.

forwardauth answers a malformed or ambiguous request on /auth/traefik and
/auth/caddy with 400 and "400 Bad Request: <why>\\n"; on /auth/nginx with 403,
X-Forwardauth-Status: 400 and X-Forwardauth-Error: <why> (nginx's
auth_request turns any other status into its own 500), which the shipped
snippet turns back into that same 400 and body.
"""

from __future__ import annotations

import re

import pytest

from harness.client import request
from harness.proxies import PROXIES
from harness.rawhttp import RawClient, RawReply
from harness.stack import APP_HOST

pytestmark = pytest.mark.proxy

BODY = re.compile(rb"400 Bad Request: [\x20-\x7e]+\n")
APP = "aiohttp"
# Paths no proxy cleans or refuses itself, so forwardauth is asked about them as sent.
REFUSED_EVERYWHERE = ["/admin/..%2fpublic/x", "/admin/..;/public/x", "/admin/%2e%2e%2fpublic/x",
                      "/public/x/..%5c..%5cadmin/x", "/app/x/..%2F..%2Fsecret/x"]
# (nginx decodes %2F when it picks a location, so "/app/..%2F..%2Fsecret/x", above
# the root once decoded, is nginx's own 400 page and never reaches forwardauth.)
# Traefik resolves raw and %2e dot segments itself (sanitizePath) and answers a raw
# "#" with its own 400: nginx and Caddy pass these to forwardauth as they are.
REFUSED_BEHIND_NGINX_CADDY = ["/admin/../public/x", "/admin/%2e%2e/public/x", "/public/x#/../../admin/x",
                              "/public/./x", "/admin%09/x"]


def as_forwarded(proxy: str, target: str) -> str:
    """The target as `proxy` passes it on: Caddy (Go's URL parser) re-escapes a raw
    "#" and "\\" (to forwardauth's X-Forwarded-Uri and to the app alike)."""
    return target.replace("#", "%23").replace("\\", "%5C") if proxy == "caddy" else target


def ask_forwardauth(stack, target: str) -> RawReply:
    """forwardauth's own answer for `target`, asked directly the way Traefik asks."""
    reply = request(stack.fa.port, "/auth/traefik", host="127.0.0.1", headers={
        "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": APP_HOST,
        "X-Forwarded-Uri": target, "Accept": "application/json"})
    return RawReply(reply.status, reply.headers, reply.body)


def through(stack, proxy: str, target: str, cred: str = "none") -> RawReply:
    running = stack.proxy(proxy, APP)
    client = RawClient(running.port)
    try:
        return client.request(target, stack.host(running), stack.creds[cred])
    finally:
        client.close()


def cases() -> list[tuple[str, str]]:
    out = [(proxy, t) for proxy in PROXIES for t in REFUSED_EVERYWHERE]
    return out + [(proxy, t) for proxy in ("nginx", "caddy") for t in REFUSED_BEHIND_NGINX_CADDY]


@pytest.mark.parametrize("proxy, target", cases())
@pytest.mark.parametrize("cred", ["none", "mfa"])
def test_a_refused_path_is_a_400_with_forwardauths_reason(stack, proxy, target, cred):
    direct = ask_forwardauth(stack, as_forwarded(proxy, target))
    assert direct.status == 400 and BODY.fullmatch(direct.body), direct
    reply = through(stack, proxy, target, cred)
    assert reply.status == 400, reply
    assert reply.body == direct.body, reply  # the same reason, through the proxy
    assert reply.header("Content-Type").startswith("text/plain"), reply
    if proxy == "nginx":  # forwardauth's internal headers stay between it and nginx
        assert reply.header("X-Forwardauth-Status") is None and reply.header("X-Forwardauth-Error") is None


@pytest.mark.parametrize("target", ["/admin/../public/x", "/admin/%2e%2e/public/x", "/admin/%2E./public/x"])
def test_traefik_resolves_dot_segments_itself(stack, target):
    """What Traefik does with them (sanitizePath): the app gets the clean /public/x."""
    reply = through(stack, "traefik", target)
    assert reply.status == 200 and b'"route": "public"' in reply.body, reply
    assert b'"raw": "/public/x"' in reply.body, reply


def test_traefik_refuses_a_raw_hash_itself(stack):
    reply = through(stack, "traefik", "/public/x#/../../admin/x")
    assert (reply.status, reply.body) == (400, b""), reply


@pytest.mark.parametrize("proxy", PROXIES)
def test_a_denied_path_stays_a_403(stack, proxy):
    reply = through(stack, proxy, "/blocked/x", "mfa")
    assert reply.status == 403, reply
    if proxy == "nginx":  # the snippet's short plain body, not nginx's HTML page
        assert (reply.header("Content-Type"), reply.body) == ("text/plain", b"403 Forbidden\n"), reply
