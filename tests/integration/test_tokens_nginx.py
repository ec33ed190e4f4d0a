"""Tokens through a real nginx (the shipped snippets) in front of the echo app."""

from __future__ import annotations

import time

import pytest

from forwardauth.tokens.jwt import keyset_from_jwks, verify
from harness.ci import missing_tool
from harness.client import request
from harness.proxies import MissingTool, require, start_proxy
from harness.tokens import APP, AUTH, TokenServer

pytestmark = pytest.mark.proxy


@pytest.fixture(scope="module")
def stack(tmp_path_factory, echo_app):
    try:
        require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    fa = TokenServer(tmp_path_factory.mktemp("fa-nginx"), tokens={"assertion": {"enabled": True}})
    fa.account("svc", kind="system")
    with fa:
        nginx = start_proxy("nginx", tmp_path_factory.mktemp("nginx"), fa.port, echo_app.port, APP, "forwardauth")
        try:
            yield fa, nginx
        finally:
            nginx.stop()


def through(nginx, path, token=None, method="GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return request(nginx.port, path, host=f"{APP}:{nginx.port}", method=method, headers=headers)


def eventually(check, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not (got := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_bearer_token_reaches_an_api_route(stack):
    fa, nginx = stack
    tok = fa.token("svc")
    r = eventually(lambda: (x := through(nginx, "/api/items", tok)).status == 200 and x)
    assert r, through(nginx, "/api/items", tok)
    app = r.app_headers()
    assert app["x-auth-request-user"] == ["svc"]
    assert "authorization" not in app  # the shipped snippet keeps forwardauth tokens from the app
    assert through(nginx, "/api/items").status == 401


def test_a_static_location_serves_its_file_to_a_token(stack):
    """Dropping the token before the app must not change how nginx serves the location."""
    fa, nginx = stack
    tok = fa.token("svc", "--name", "static")
    r = eventually(lambda: (x := through(nginx, "/api/static/any", tok)).status == 200 and x)
    assert r and r.body == b"a static file\n", through(nginx, "/api/static/any", tok)
    assert through(nginx, "/api/static/any").status == 401


def test_attenuated_read_only_token_is_refused_on_post(stack):
    fa, nginx = stack
    tok = fa.token("svc", "--name", "ro")
    ro = fa.cli("tokens", "attenuate", tok, "--method", "GET,HEAD").strip()
    assert eventually(lambda: through(nginx, "/api/items", ro).status == 200)
    r = through(nginx, "/api/items", ro, method="POST")
    assert r.status == 401
    assert through(nginx, "/api/items", tok, method="POST").status == 200


def test_app_verifies_the_identity_assertion_with_the_jwks(stack):
    fa, nginx = stack
    tok = fa.token("svc", "--name", "assert")
    r = eventually(lambda: (x := through(nginx, "/api/whoami", tok)).status == 200 and x)
    (assertion,) = r.app_headers()["x-auth-request-jwt"]
    jwks = request(fa.port, "/.well-known/jwks.json", host=AUTH).json()
    claims = verify(assertion, keyset_from_jwks(jwks), algorithm="ES256", issuer=f"http://{AUTH}:{fa.port}",
                    audience=APP, now=time.time())
    assert claims["sub"] == "svc" and claims["src"] == "token"


def test_a_client_cannot_send_its_own_assertion(stack):
    _, nginx = stack
    r = request(nginx.port, "/public/x", host=f"{APP}:{nginx.port}", headers={"X-Auth-Request-Jwt": "forged"})
    assert r.status == 200
    assert "x-auth-request-jwt" not in r.app_headers()
