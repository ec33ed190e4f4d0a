"""Sign-in and step-up against the real OpenID provider, at the HTTP level.

forwardauth runs in process (aiohttp TestServer on a free loopback port);
the provider is panva's oidc-provider (tests/oidc_provider). Each refusal
asserts the exact status and message.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from forwardauth.config import parse_config
from forwardauth.runtime import Runtime
from forwardauth.server import CTX, build_app
from forwardauth.state.memory import MemoryStore
from harness.oidc import ACR_MFA, ACR_PASSWORD, OidcProvider
from harness.procs import free_port

pytestmark = pytest.mark.oidc

CONFIG = """
server:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
  trusted_proxies: [127.0.0.1/32]
  allowed_redirect_domains: [app.test]
session: {{cookie_name: fa, secure: false}}
keys: {{inline: [{{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}}]}}
state: memory://
levels:
  - {{name: password, acr: ["urn:forwardauth:acr:password"], amr: [pwd]}}
  - {{name: mfa, acr: ["urn:forwardauth:acr:mfa"], amr: [mfa, otp]}}
  - {{name: hardware, acr: ["urn:forwardauth:acr:hardware"]}}
oidc:
  issuer: {issuer}
  client_id: forwardauth
  client_secret: {secret}
  essential_acr: {essential}
policy:
  rules:
    - {{hosts: [app.test], paths: [/admin/], level: mfa}}
    - {{hosts: [app.test], paths: [/fresh/], level: password, max_age: 5m}}
    - {{hosts: [app.test], level: password}}
"""


@pytest.fixture(scope="module")
def fa_port():
    return free_port()


@pytest.fixture(scope="module")
def provider(fa_port):
    with OidcProvider([f"http://127.0.0.1:{fa_port}/oauth2/callback"],
                      post_logout_redirect_uris=[f"http://127.0.0.1:{fa_port}/oauth2/signed_out"]) as op:
        yield op


class Browser:
    """A cookie-keeping client that does not follow redirects."""

    def __init__(self, base: str, op: OidcProvider, http: aiohttp.ClientSession):
        self.base, self.op, self.http = base, op, http

    async def get(self, url: str, **kw) -> aiohttp.ClientResponse:
        r = await self.http.get(url if url.startswith("http") else self.base + url, allow_redirects=False, **kw)
        await r.read()
        return r

    async def start(self, rd: str) -> str:
        r = await self.get(f"/oauth2/start?rd={rd}")
        assert r.status == 302, await r.text()
        return r.headers["Location"]

    async def login(self, rd: str, sub: str, acr: str, **kw) -> aiohttp.ClientResponse:
        """Start, let the provider sign `sub` in at `acr`, and deliver the callback."""
        authorize = await self.start(rd)
        self.op.next_login(sub, acr, **kw)
        callback = self.op.user_agent().follow(authorize)
        return await self.get(callback)

    def session(self, ctx):
        cookie = self.http.cookie_jar.filter_cookies(URL(self.base)).get("fa")
        return ctx.runtime.codec.open(cookie.value if cookie else None, time.time()).session


async def _server(fa_port, op, essential=True):
    cfg = parse_config(CONFIG.format(port=fa_port, issuer=op.issuer, secret=op.client_secret,
                                     essential=str(essential).lower()), "test.yaml")
    app = build_app(Runtime.build(cfg), MemoryStore())
    server = TestServer(app, host="127.0.0.1", port=fa_port)
    await server.start_server()
    return server, app[CTX]


@pytest.fixture
async def fa(fa_port, provider):
    server, ctx = await _server(fa_port, provider)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Browser(f"http://127.0.0.1:{fa_port}", provider, http), ctx
    await server.close()


@pytest.fixture
async def fa_wish(fa_port, provider):
    """acr_values only (no essential acr claim): the provider may answer lower."""
    server, ctx = await _server(fa_port, provider, essential=False)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Browser(f"http://127.0.0.1:{fa_port}", provider, http), ctx
    await server.close()


def q(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_sign_in_then_step_up(fa, provider):
    b, ctx = fa
    authorize = await b.start("http://app.test/page")
    params = q(authorize)
    assert authorize.startswith(provider.issuer)
    assert params["acr_values"].split()[0] == ACR_PASSWORD
    assert params["code_challenge_method"] == "S256" and "prompt" not in params
    provider.next_login("alice", ACR_PASSWORD, groups=["staff"])
    r = await b.get(provider.user_agent().follow(authorize))
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/page")
    s = b.session(ctx)
    assert (s.sub, s.level, s.email, s.groups, s.source) == ("alice", "password", "alice@example.com",
                                                             ("staff",), "oidc")
    first_sid = s.sid

    authorize = await b.start("http://app.test/admin/x")
    params = q(authorize)
    assert params["acr_values"].split()[0] == ACR_MFA
    assert (params["prompt"], params["login_hint"]) == ("login", "alice")
    provider.next_login("alice", ACR_MFA)
    r = await b.get(provider.user_agent().follow(authorize))
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/admin/x")
    s = b.session(ctx)
    assert (s.sub, s.level) == ("alice", "mfa")
    assert set(s.proofs) == {"password", "mfa"} and s.sid != first_sid
    assert ctx.store.revoked.get(first_sid)  # the replaced session is revoked


async def test_already_satisfied_goes_straight_back(fa):
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_MFA)
    r = await b.get("/oauth2/start?rd=http://app.test/admin/")
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/admin/")


async def test_level_parameter_may_only_ask_for_more(fa):
    b, _ = fa
    assert q(await b.start("http://app.test/&level=hardware"))["acr_values"] == "urn:forwardauth:acr:hardware"
    assert q(await b.start("http://app.test/admin/&level=password"))["acr_values"].startswith(ACR_MFA)


async def test_lower_acr_than_requested_keeps_what_was_proven(fa_wish, provider):
    b, ctx = fa_wish
    r = await b.login("http://app.test/admin/", "alice", ACR_PASSWORD)
    assert r.status == 403
    text = await r.text()
    assert "You are signed in at level password, but this page needs level mfa" in text
    assert b.session(ctx).level == "password"


async def test_essential_acr_refusal_is_explained(fa, provider):
    b, ctx = fa
    r = await b.login("http://app.test/admin/", "alice", ACR_PASSWORD)
    assert r.status == 403
    assert "could not confirm the level mfa that this page needs (unmet_authentication_requirements)" \
        in await r.text()
    assert b.session(ctx) is None


async def test_different_subject_on_step_up_replaces_the_session(fa):
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD, groups=["admins"])
    alice = b.session(ctx)
    r = await b.login("http://app.test/admin/", "bob", ACR_MFA)
    assert r.status == 302
    s = b.session(ctx)
    assert (s.sub, s.level, s.groups, set(s.proofs)) == ("bob", "mfa", (), {"mfa"})
    assert alice.sid in ctx.store.revoked


async def test_max_age_route_forces_reauthentication(fa, provider):
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD)
    authorize = await b.start("http://app.test/fresh/")  # satisfied: proven just now
    assert authorize == "http://app.test/fresh/"
    authorize = await b.start("http://app.test/fresh/&level=mfa")
    assert (q(authorize)["max_age"], q(authorize)["prompt"]) == ("300", "login")


async def test_missing_auth_time_under_max_age(fa, provider):
    b, _ = fa
    r = await b.login("http://app.test/fresh/", "alice", ACR_PASSWORD, id_token_omit=["auth_time"])
    assert r.status == 401
    assert "ID token lacks auth_time although max_age was requested" in await r.text()


@pytest.mark.parametrize("change,message", [
    ({"nonce": "forged"}, "ID token nonce does not match this login"),
    ({"iss": "http://127.0.0.1:1/evil"}, "ID token from the wrong issuer"),
    ({"aud": "someone-else"}, "ID token not issued for this client (aud)"),
    ({"exp": 1_000_000_000}, "ID token expired"),
])
async def test_refused_id_tokens(fa, change, message):
    b, ctx = fa
    r = await b.login("http://app.test/", "alice", ACR_PASSWORD, id_token_set=change)
    assert r.status == 401
    assert message in await r.text()
    assert b.session(ctx) is None


async def test_state_missing_mismatched_and_replayed(fa, provider):
    b, ctx = fa
    r = await b.get("/oauth2/callback?code=x")
    assert r.status == 400 and "The sign-in answer has no state; start again." in await r.text()
    authorize = await b.start("http://app.test/")
    provider.next_login("alice", ACR_PASSWORD)
    callback = provider.user_agent().follow(authorize)
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    r = await b.get(forged)
    assert r.status == 400
    assert "does not belong to a login started in this browser (state mismatch or expired)" in await r.text()
    login_cookies = {c.key: c.value for c in b.http.cookie_jar if "_login_" in c.key}
    r = await b.get(callback)
    assert r.status == 302
    # Replaying the same answer with the same login cookie (an attacker who copied both):
    r = await b.get(callback, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in login_cookies.items())})
    assert r.status == 400 and "This sign-in answer was already used." in await r.text()


async def test_code_replay_with_a_new_login_is_refused(fa, provider):
    b, ctx = fa
    authorize = await b.start("http://app.test/")
    provider.next_login("alice", ACR_PASSWORD)
    callback = provider.user_agent().follow(authorize)
    assert (await b.get(callback)).status == 302
    code = q(callback)["code"]
    new_state = q(await b.start("http://app.test/&level=mfa"))["state"]
    r = await b.get(f"/oauth2/callback?code={code}&state={new_state}")
    assert r.status == 400
    assert "the provider refused the authorization code (invalid_grant)" in await r.text()


async def test_provider_down(fa_port):
    """Existing sessions keep working; starting a login says clearly that sign-in is unavailable."""
    op = OidcProvider([f"http://127.0.0.1:{fa_port}/oauth2/callback"]).start()
    server, ctx = await _server(fa_port, op)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            b = Browser(f"http://127.0.0.1:{fa_port}", op, http)
            assert (await b.login("http://app.test/", "alice", ACR_PASSWORD)).status == 302
            op.stop()
            cookie = b.http.cookie_jar.filter_cookies(URL(b.base))["fa"].value
            r = await b.get("/auth/nginx", headers={"X-Original-URL": "http://app.test/x",
                                                    "X-Original-Method": "GET", "Cookie": f"fa={cookie}"})
            assert (r.status, r.headers["X-Auth-Request-User"]) == (200, "alice")
            r = await b.get("/oauth2/start?rd=http://app.test/admin/")
            assert r.status == 502
            assert "The identity provider cannot be reached right now." in await r.text()
    finally:
        op.stop()
        await server.close()


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict, claims: dict, key: bytes | None) -> str:
    import hashlib
    import hmac
    import json

    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


async def test_forged_id_tokens_are_refused(provider):
    """alg none, and HS256 keyed with the provider's public key (algorithm confusion)."""
    from forwardauth.oidc.client import ProviderClient
    from forwardauth.oidc.flow import LoginError
    from forwardauth.oidc.settings import OidcConfig
    from joserfc.jwk import RSAKey

    client = ProviderClient(OidcConfig(issuer=provider.issuer, client_id="forwardauth", client_secret="x"))
    rsa = next(k for k in provider.jwks()["keys"] if k["kty"] == "RSA")
    public_pem = RSAKey.import_key(rsa).as_pem(private=False)
    claims = {"iss": provider.issuer, "aud": "forwardauth", "sub": "mallory", "exp": time.time() + 60,
              "iat": time.time(), "nonce": "n"}
    try:
        for header, key, error in [
            ({"alg": "none", "kid": rsa["kid"]}, None, "ID token signature refused (unsupported_algorithm)"),
            ({"alg": "HS256", "kid": rsa["kid"]}, public_pem, "ID token signature refused (unsupported_algorithm)"),
            ({"alg": "RS256", "kid": rsa["kid"]}, b"x", "ID token signature refused (bad_signature)"),
        ]:
            with pytest.raises(LoginError) as exc:
                await client.verify_id_token(_forge(header, claims, key))
            assert (exc.value.status, exc.value.message) == (401, error)
        with pytest.raises(LoginError) as exc:
            await client.verify_id_token("not.a.jwt")
        assert exc.value.message == "ID token is malformed"
    finally:
        await client.close()


async def test_sign_out_goes_through_the_providers_end_session(fa, provider):
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD)
    old = b.session(ctx)
    r = await b.get("/oauth2/sign_out?rd=http%3A%2F%2Fapp.test%2Fbye")
    assert r.status == 302
    end = provider.discovery["end_session_endpoint"]
    assert r.headers["Location"].startswith(end + "?")
    params = q(r.headers["Location"])
    assert params.pop("state")
    assert params == {"client_id": "forwardauth", "post_logout_redirect_uri": f"{b.base}/oauth2/signed_out"}
    assert b.session(ctx) is None
    assert old.sid in ctx.store.revoked
    # The provider comes back to the one registered address; rd travels sealed in state.
    back = provider.user_agent().follow(r.headers["Location"])
    assert back.startswith(f"{b.base}/oauth2/signed_out?")
    r = await b.get(back)
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/bye")


@pytest.mark.parametrize("state", ["", "forged", "k1.AAAA"])
async def test_signed_out_with_a_bad_state_goes_to_public_url(fa, state):
    b, _ = fa
    r = await b.get(f"/oauth2/signed_out?state={state}")
    assert (r.status, r.headers["Location"]) == (302, f"{b.base}/")
