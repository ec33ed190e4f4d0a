"""/oauth2/start: the level comes from the policy for rd, and rd is never an open redirect."""

import time
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app
from forwardauth.core.runtime import Runtime
from forwardauth.state.memory import MemoryStore

from .conftest import BASE, make_config

PUBLIC = "https://auth.example.com/"
BASE_RD = BASE.replace("trusted_proxies: [127.0.0.1/32]",
                       "trusted_proxies: [127.0.0.1/32]\n  allowed_redirect_domains: [.example.com, app.test]")


@pytest.fixture
async def client():
    rt = Runtime.build(make_config("policy: {rules: [{level: password}]}\n", BASE_RD))
    async with TestClient(TestServer(build_app(rt, MemoryStore()), host="127.0.0.1")) as c:
        s = rt.codec.new("alice", "hardware", time.time())
        c.session.cookie_jar.update_cookies({"fa": rt.codec.seal(s)})
        yield c


ALLOWED = [
    ("https://app.example.com/x?y=1#z", "https://app.example.com/x?y=1#z"),
    ("https://example.com/", "https://example.com/"),
    ("https://a.b.example.com:8443/p", "https://a.b.example.com:8443/p"),
    ("http://app.test/", "http://app.test/"),
    ("HTTPS://APP.EXAMPLE.COM/Path", "https://app.example.com/Path"),
    ("https://auth.example.com/account", "https://auth.example.com/account"),
    ("/local/page", "https://auth.example.com/local/page"),
    ("https://app.example.com", "https://app.example.com/"),
]

REFUSED = [
    "https://evil.test/",
    "https://evilexample.com/",
    "https://example.com.evil.test/",
    "https://app.test.evil.test/",
    "//evil.test/",
    "///evil.test/",
    "/\\evil.test/",
    "\\\\evil.test",
    "https:\\\\evil.test",
    "https:/evil.test",
    "https:evil.test",
    "https://app.example.com@evil.test/",
    "https://user:pw@app.example.com/",
    "https://evil.test#@app.example.com/",
    "https://evil.test?@app.example.com/",
    "https://evil.test\\@app.example.com/",
    "javascript:alert(1)",
    "JavaScript://app.example.com/%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "ftp://app.example.com/",
    "/%2f%2fevil.test",
    "/%5cevil.test",
    "/%252f%252fevil.test",
    "/%09/evil.test",
    " https://evil.test/",
    "https://evil.test%2eexample.com/",
    "https://app.example.com%2f@evil.test/",
    "https://аpp.example.com/",  # Cyrillic a
    "https://app.example.com:99999/",
    "https://app.example.com./",
    "https://%65vil.test/",
    "https://app.example.com/%0d%0aSet-Cookie:x=1",
    "evil.test",
    "",
]


ENDPOINTS = ["/oauth2/start", "/oauth2/sign_out"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("target,expected", ALLOWED)
async def test_allowed_targets(client, endpoint, target, expected):
    r = await client.get(f"{endpoint}?rd={quote(target, safe='')}", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, expected)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("target", REFUSED)
async def test_refused_targets_fall_back_to_public_url(client, endpoint, target):
    r = await client.get(f"{endpoint}?rd={quote(target, safe='')}", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, PUBLIC)


async def test_sign_out_revokes_the_session_and_clears_the_cookie(client):
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["fa"].value
    r = await client.get("/oauth2/userinfo")
    assert r.status == 200
    info = await r.json()
    assert (info["user"], info["level"], info["source"]) == ("alice", "hardware", "local")
    r = await client.get("/oauth2/sign_out", allow_redirects=False)
    assert r.headers["Set-Cookie"].startswith("fa=; Path=/; Max-Age=0; HttpOnly")
    r = await client.get("/oauth2/userinfo", headers={"Cookie": f"fa={cookie}"})
    assert r.status == 401
    assert (await r.json(), r.headers["WWW-Authenticate"]) == ({"error": "unauthorized"},
                                                               'Bearer realm="forwardauth"')


async def test_no_sign_in_method_for_the_level(client):
    client.session.cookie_jar.clear()
    r = await client.get("/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2F", allow_redirects=False)
    assert r.status == 503
    assert "This page needs level password, and no sign-in method configured here can prove it." in await r.text()


async def test_oidc_added_by_a_reload_needs_a_restart(client, caplog):
    """The provider client and the callback route are made at start: an `oidc:` section that a reload
    adds is not half-applied (it used to answer 500), and the log says a restart is needed."""
    from forwardauth.web.context import CTX

    ctx = client.server.app[CTX]
    with_oidc = make_config("policy: {rules: [{level: password}]}\n"
                            "oidc: {issuer: https://idp.example.com, client_id: fa, client_secret: s}\n", BASE_RD)
    ctx.runtime = Runtime.build(with_oidc)
    client.session.cookie_jar.clear()
    with caplog.at_level("WARNING", logger="forwardauth.oidc"):
        r = await client.get("/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2F", allow_redirects=False)
    assert r.status == 503
    assert "This page needs level password, and no sign-in method configured here can prove it." in await r.text()
    assert [rec.getMessage() for rec in caplog.records] == [
        "the oidc section changed on reload; restart forwardauth to apply it (the settings it started with stay in use)"]
    assert (await client.get("/oauth2/callback?state=x&code=y")).status == 404


async def test_a_provider_added_by_a_reload_offers_no_button_before_a_restart():
    """The sign-in page offered "Sign in with your organisation's account" as soon as a reload
    added an `oidc:` section, but the provider is only used after a restart: the button led to
    "No way to sign in". The offer follows the settings the app started with."""
    from forwardauth.web.context import CTX

    local = "policy: {rules: [{level: password}]}\nlocal: {enabled: true}\n"
    oidc = "oidc: {issuer: https://idp.example.com, client_id: fa, client_secret: s}\n"
    button = "Sign in with your organisation&#39;s account"
    page = "/oauth2/sign_in?rd=https%3A%2F%2Fapp.example.com%2F"
    app = build_app(Runtime.build(make_config(local, BASE_RD)), MemoryStore())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.get(page)
        assert r.status == 200 and button not in await r.text()
        app[CTX].runtime = Runtime.build(make_config(local + oidc, BASE_RD))
        r = await c.get(page)
        assert r.status == 200 and button not in await r.text()
    started = build_app(Runtime.build(make_config(local + oidc, BASE_RD)), MemoryStore())
    async with TestClient(TestServer(started, host="127.0.0.1")) as c:
        text = await (await c.get(page)).text()
        assert (f'<p class="alt"><a href="/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2F&amp;via=upstream">'
                f"{button}</a></p>") in text
