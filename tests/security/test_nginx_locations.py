"""The other locations of the nginx examples: /static/ (served from disk, never the
app) and compose's /oauth2/ (forwardauth's pages, never the app). nginx picks a
location by its cleaned path and proxies the raw one, so a location that does
not ask forwardauth must not be one that reaches the app."""

from __future__ import annotations

import json

import pytest

from harness.forwardauth import COOKIE
from harness.rawhttp import RawClient
from harness.shipped import STATIC_BODY, STATIC_FILE, start_shipped
from harness.stack import APP_HOST

pytestmark = pytest.mark.proxy

INTO_STATIC = ["/admin/../static/hello.txt", "/admin/..%2fstatic/hello.txt", "/admin/%2e%2e/static/hello.txt",
               "/admin/..%2Fstatic/hello.txt", "/blocked/../static/x", "/blocked/..%2fstatic/x",
               "/admin/..;/static/x", "/admin/.%2e/static/x", "/admin/x/../../static/x", "/admin//../static/x"]
OUT_OF_STATIC = ["/static/../admin/x", "/static/..%2fadmin/x", "/static%2f..%2fadmin/x", "/static/%2e%2e/admin/x",
                 "/static/x#/../../admin/x", "/static/..%5cadmin/x", "/static/../../etc/passwd",
                 "/static/..%2f..%2f..%2fetc/passwd", "/static../admin/x"]
INTO_OAUTH2 = ["/admin/../oauth2/x", "/admin/..%2foauth2/x", "/admin/%2e%2e/oauth2/x", "/blocked/../oauth2/start"]


@pytest.fixture(scope="module", params=["nginx", "compose"])
def example(request, stack, tmp_path_factory):
    """examples/<param>/nginx.conf in front of the cleaning app and of aiohttp's router."""
    started = {}
    try:
        for kind in ("cleaner", "aiohttp"):
            started[kind] = start_shipped("nginx", tmp_path_factory.mktemp(f"{request.param}-{kind}"),
                                          stack.fa.port, stack.apps[kind].port, APP_HOST, COOKIE,
                                          nginx_example=request.param)
        yield request.param, started
    finally:
        for running in started.values():
            running.stop()


def get(running, target: str, headers: dict | None = None):
    client = RawClient(running.port)
    try:
        return client.request(target, f"{APP_HOST}:{running.port}", {"Accept": "application/json", **(headers or {})})
    except Exception:  # noqa: BLE001 - nginx closed the connection on a request line it refuses
        return None
    finally:
        client.close()


def app_route(reply) -> str | None:
    if reply is None or reply.status != 200 or not reply.body.startswith(b"{"):
        return None
    return json.loads(reply.body).get("route")


def test_static_files_are_served_by_nginx(example):
    _, proxies = example
    for running in proxies.values():
        reply = get(running, f"/static/{STATIC_FILE}")
        assert (reply.status, reply.body) == (200, STATIC_BODY), reply


@pytest.mark.parametrize("target", INTO_STATIC + OUT_OF_STATIC)
def test_no_spelling_through_static_reaches_a_protected_route(example, target):
    _, proxies = example
    for kind, running in proxies.items():
        reply = get(running, target)
        assert app_route(reply) in (None, "public"), f"{kind}: {target!r} -> {reply!r}"
        assert reply is None or b"root:" not in reply.body, reply


@pytest.mark.parametrize("target", INTO_OAUTH2)
def test_no_spelling_through_oauth2_reaches_the_app(example, target):
    name, proxies = example
    for kind, running in proxies.items():
        reply = get(running, target)
        assert app_route(reply) in (None, "public"), f"{kind}: {target!r} -> {reply!r}"


@pytest.mark.parametrize("example", ["compose"], indirect=True)  # the only example with /oauth2/ on the app's host
def test_compose_oauth2_location_goes_to_forwardauth(example):
    name, proxies = example
    assert name == "compose"
    for running in proxies.values():
        reply = get(running, "/oauth2/userinfo")
        assert reply.status == 401 and app_route(reply) is None, reply
        assert reply.header("WWW-Authenticate") is not None, reply  # forwardauth's answer, not the app's
