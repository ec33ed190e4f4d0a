"""Sign-in and step-up against the real OpenID provider, at the HTTP level.

forwardauth runs in process (aiohttp TestServer on a free loopback port);
the provider is panva's oidc-provider (tests/oidc_provider). Each refusal
asserts the exact status and message.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from forwardauth.composition import build_app, parse_config
from forwardauth.core.runtime import Runtime
from forwardauth.oidc.client import ProviderDown
from forwardauth.oidc.flow import login_cookie_name
from forwardauth.oidc.handlers import CLIENT, MAX_LOGIN_RD
from forwardauth.state.memory import MemoryStore
from forwardauth.web.context import CTX
from forwardauth.web.pages import continue_to
from harness.oidc import ACR_MFA, ACR_PASSWORD, OidcProvider
from harness.procs import free_port

pytestmark = pytest.mark.oidc

CONFIG = """
server:
  listen: 127.0.0.1:{port}
  public_url: http://127.0.0.1:{port}
  trusted_proxies: [127.0.0.1/32]
  allowed_redirect_domains: [app.test]
session: {{cookie_name: fa, secure: false{session_extra}}}
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
  http_timeout: {http_timeout}
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

    def set_session(self, ctx, session):
        self.http.cookie_jar.update_cookies({"fa": ctx.runtime.codec.seal(session)}, URL(self.base))

    def login_cookies(self) -> dict[str, str]:
        return {c.key: c.value for c in self.http.cookie_jar if "_login_" in c.key}

    def session(self, ctx):
        cookie = self.http.cookie_jar.filter_cookies(URL(self.base)).get("fa")
        return ctx.runtime.codec.open(cookie.value if cookie else None, time.time()).session


def _config(fa_port, issuer, secret, essential=True, session_extra="", http_timeout="5s"):
    return parse_config(CONFIG.format(port=fa_port, issuer=issuer, secret=secret, essential=str(essential).lower(),
                                      session_extra=session_extra, http_timeout=http_timeout), "test.yaml")


async def _server(fa_port, op, essential=True, **kw):
    cfg = _config(fa_port, op.issuer, op.client_secret, essential, **kw)
    app = build_app(Runtime.build(cfg), MemoryStore())
    server = TestServer(app, host="127.0.0.1", port=fa_port)
    await server.start_server()
    return server, app[CTX]


@pytest.fixture
async def fa(fa_port, provider):
    server, ctx = await _server(fa_port, provider)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        b = Browser(f"http://127.0.0.1:{fa_port}", provider, http)
        b.app = server.app
        yield b, ctx
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
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/admin/")
    s = b.session(ctx)
    assert (s.sub, s.level, s.groups, set(s.proofs)) == ("bob", "mfa", (), {"mfa"})
    assert alice.sid in ctx.store.revoked


async def test_max_age_route_forces_reauthentication(fa, provider):
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD)
    assert await b.start("http://app.test/fresh/") == "http://app.test/fresh/"  # proven just now
    # The same session, its proof 10 minutes old (max_age is 5 minutes):
    s = b.session(ctx)
    old = replace(s, proofs={"password": time.time() - 600})
    b.set_session(ctx, old)
    authorize = await b.start("http://app.test/fresh/")
    assert authorize.startswith(provider.issuer)
    params = q(authorize)
    assert (params["max_age"], params["prompt"], params["login_hint"]) == ("300", "login", "alice")
    provider.next_login("alice", ACR_PASSWORD)
    before = time.time()
    r = await b.get(provider.user_agent().follow(authorize))
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/fresh/")
    s = b.session(ctx)
    assert s.sub == "alice" and s.proofs["password"] >= before
    assert old.sid in ctx.store.revoked
    assert await b.start("http://app.test/fresh/") == "http://app.test/fresh/"


async def test_sso_answer_keeps_the_providers_auth_time(fa, provider):
    """Nothing forced a re-authentication, so the provider may answer from an
    old SSO session: the proof is as old as its auth_time, not the callback."""
    b, ctx = fa
    r = await b.login("http://app.test/", "alice", ACR_PASSWORD, auth_time_offset=-3600)
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/")
    s = b.session(ctx)
    assert abs(s.proofs["password"] - (time.time() - 3600)) < 5
    authorize = await b.start("http://app.test/fresh/")  # max_age 5m: back to the provider
    assert authorize.startswith(provider.issuer)
    assert (q(authorize)["max_age"], q(authorize)["prompt"]) == ("300", "login")
    # The decision endpoint says the same.
    r = await b.get("/auth/nginx", headers={"X-Original-URL": "http://app.test/fresh/x", "X-Original-Method": "GET"})
    assert r.status == 401


async def test_forced_reauthentication_with_an_old_auth_time_is_refused(fa, provider):
    """prompt=login was sent (step-up): an auth_time from before the login means the provider did not do it."""
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD)
    first = b.session(ctx)
    authorize = await b.start("http://app.test/admin/")
    assert q(authorize)["prompt"] == "login"
    provider.next_login("alice", ACR_MFA, auth_time_offset=-3600)
    r = await b.get(provider.user_agent().follow(authorize))
    assert r.status == 401
    assert "the provider did not re-authenticate as asked (auth_time is older than this sign-in)" in await r.text()
    assert b.session(ctx) == first  # unchanged


async def test_no_auth_time_means_no_proof_time(fa, provider):
    """Without auth_time (and nothing forced), the level is held but counts as never proven for max_age."""
    b, ctx = fa
    r = await b.login("http://app.test/", "alice", ACR_PASSWORD, id_token_omit=["auth_time"])
    assert r.status == 302
    s = b.session(ctx)
    assert (s.level, dict(s.proofs)) == ("password", {})
    assert q(await b.start("http://app.test/fresh/"))["max_age"] == "300"


async def test_local_account_with_the_same_name_is_not_merged(fa, provider):
    """A local session "alice" and the provider's subject "alice" are two people: replace, never merge."""
    b, ctx = fa
    local = ctx.runtime.codec.new("alice", "password", time.time() - 60, groups=("local-admins",), source="local")
    b.set_session(ctx, local)
    authorize = await b.start("http://app.test/admin/")
    assert q(authorize)["prompt"] == "login" and "login_hint" not in q(authorize)
    provider.next_login("alice", ACR_MFA, groups=["staff"])
    r = await b.get(provider.user_agent().follow(authorize))
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/admin/")
    s = b.session(ctx)
    assert (s.sub, s.level, s.source, set(s.proofs), s.groups) == ("alice", "mfa", "oidc", {"mfa"}, ("staff",))
    assert local.sid in ctx.store.revoked


async def test_missing_auth_time_under_max_age(fa, provider):
    b, ctx = fa
    r = await b.login("http://app.test/fresh/", "alice", ACR_PASSWORD, id_token_omit=["auth_time"])
    assert r.status == 401
    assert "ID token lacks auth_time although max_age was requested" in await r.text()
    assert b.session(ctx) is None


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


async def test_a_replay_through_another_forwardauth_process_is_refused(fa_port, provider, tmp_path):
    """Single use across processes: two forwardauth (this one, and a real second
    `forwardauth serve` on another port) share one SQLite state file, as
    `serve --workers N` or replicas do. An answer used on one is refused by the
    other before the provider is asked (the provider's refusal of a reused code
    reads differently: see test_code_replay_with_a_new_login_is_refused)."""
    import sys

    from forwardauth.state.sqlite import SQLiteStore
    from harness.procs import Proc, http_status

    db = tmp_path / "state.db"
    cfg = _config(fa_port, provider.issuer, provider.client_secret)
    server = TestServer(build_app(Runtime.build(cfg), SQLiteStore(str(db))), host="127.0.0.1", port=fa_port)
    await server.start_server()
    other_port = free_port()
    text = CONFIG.format(port=fa_port, issuer=provider.issuer, secret=provider.client_secret, essential="true",
                         session_extra="", http_timeout="5s")
    text = text.replace(f"listen: 127.0.0.1:{fa_port}", f"listen: 127.0.0.1:{other_port}")
    text = text.replace("state: memory://", f"state: sqlite://{db}")
    (tmp_path / "other.yaml").write_text(text)
    other = Proc("forwardauth-2", [sys.executable, "-m", "forwardauth", "serve", "-c", tmp_path / "other.yaml"],
                 tmp_path / "other.log").start()
    try:
        await asyncio.to_thread(other.wait_until, lambda: http_status(other_port, "/readyz") == 200)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            b = Browser(f"http://127.0.0.1:{fa_port}", provider, http)
            for first, second in ((fa_port, other_port), (other_port, fa_port)):
                http.cookie_jar.clear()  # signed out: each round is a new sign-in
                authorize = await b.start("http://app.test/")
                provider.next_login("alice", ACR_PASSWORD)
                answer = urlsplit(provider.user_agent().follow(authorize))
                assert answer.netloc == f"127.0.0.1:{fa_port}"
                path = f"{answer.path}?{answer.query}"
                cookie = "; ".join(f"{k}={v}" for k, v in b.login_cookies().items())
                r = await b.get(f"http://127.0.0.1:{first}{path}", headers={"Cookie": cookie})
                assert (r.status, r.headers["Location"]) == (302, "http://app.test/"), await r.text()
                # The same answer and login cookie (an attacker who copied both), on the other process:
                r = await b.get(f"http://127.0.0.1:{second}{path}", headers={"Cookie": cookie})
                assert r.status == 400 and "This sign-in answer was already used." in await r.text()
                assert "fa=" not in r.headers.get("Set-Cookie", "")
    finally:
        other.stop()
        await server.close()
    state = q(path)["state"]
    assert state not in other.log() and state not in db.read_bytes().decode(errors="replace")


async def test_a_state_store_down_at_the_callback_refuses_with_503(fa, provider, monkeypatch):
    """Without the claim a replay could not be told apart: fail closed, with a clear page.
    The answer is not burnt: once the store is back, the same answer signs in."""
    from forwardauth.state.base import StoreUnavailable

    b, ctx = fa

    async def down(key, ttl, now):
        raise StoreUnavailable("sqlite state /var/lib/forwardauth/state.db: OperationalError: disk I/O error")

    authorize = await b.start("http://app.test/")
    provider.next_login("alice", ACR_PASSWORD)
    callback = provider.user_agent().follow(authorize)
    monkeypatch.setattr(ctx.store, "claim_once", down)
    r = await b.get(callback)
    assert r.status == 503
    assert ("The sign-in could not be completed because forwardauth&#39;s state store cannot be reached right "
            "now. Please start again in a minute.") in await r.text()
    assert "Set-Cookie" not in r.headers and b.session(ctx) is None
    monkeypatch.undo()
    r = await b.get(callback)
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/")
    assert b.session(ctx).sub == "alice"


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
    client = server.app[CLIENT]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            b = Browser(f"http://127.0.0.1:{fa_port}", op, http)
            assert (await b.login("http://app.test/", "alice", ACR_PASSWORD)).status == 302
            op.stop()
            cookie = b.http.cookie_jar.filter_cookies(URL(b.base))["fa"].value
            r = await b.get("/auth/nginx", headers={"X-Original-URL": "http://app.test/x",
                                                    "X-Original-Method": "GET", "Cookie": f"fa={cookie}"})
            assert (r.status, r.headers["X-Auth-Request-User"]) == (200, "alice")
            # The provider answered moments ago (within health_ttl): the cached
            # document is used, without asking it again.
            assert (await b.get("/oauth2/start?rd=http://app.test/admin/")).status == 302
            client.health_ttl = 0  # now it is asked, and does not answer
            fetches = count_fetches(client)
            r = await b.get("/oauth2/start?rd=http://app.test/admin/")
            assert r.status == 502
            assert "The identity provider cannot be reached right now. Please try again in a minute." in await r.text()
            # Within down_ttl the next starts answer at once, without another attempt.
            r = await b.get("/oauth2/start?rd=http://app.test/admin/")
            assert r.status == 502 and len(fetches) == 1
    finally:
        op.stop()
        await server.close()


async def test_concurrent_starts_share_one_check_of_a_hanging_provider(fa_port):
    """A provider that accepts connections and never answers: N starts at once wait for one timeout, not N."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    issuer = f"http://127.0.0.1:{hang.getsockname()[1]}"
    app = build_app(Runtime.build(_config(fa_port, issuer, "x", http_timeout="1s")), MemoryStore())
    server = TestServer(app, host="127.0.0.1", port=fa_port)
    await server.start_server()
    fetches = count_fetches(app[CLIENT])
    try:
        async with aiohttp.ClientSession() as http:
            async def start():
                async with http.get(f"http://127.0.0.1:{fa_port}/oauth2/start?rd=http://app.test/",
                                    allow_redirects=False) as r:
                    return r.status, await r.text()

            t0 = time.monotonic()
            answers = await asyncio.gather(*(start() for _ in range(8)))
            took = time.monotonic() - t0
        assert [a[0] for a in answers] == [502] * 8
        assert all("The identity provider cannot be reached right now." in a[1] for a in answers)
        assert len(fetches) == 1 and 0.9 < took < 3, (fetches, took)
    finally:
        await server.close()
        hang.close()


def count_fetches(client) -> list[str]:
    """Every document the provider client fetches (discovery, JWKS, userinfo), in order."""
    seen: list[str] = []
    real = client._get_json

    async def counting(url, **kw):
        seen.append(urlsplit(url).path)
        return await real(url, **kw)

    client._get_json = counting
    return seen


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


def _rs256(claims: dict, kid: str) -> str:
    """A token signed by a key the provider never published (joserfc, a fresh RSA key)."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    return jwt.encode({"alg": "RS256", "kid": kid}, claims, RSAKey.generate_key(2048))


def _claims_for(provider, authorize: str) -> dict:
    now = time.time()
    return {"iss": provider.issuer, "aud": "forwardauth", "sub": "mallory", "exp": now + 60, "iat": now,
            "nonce": q(authorize)["nonce"], "acr": ACR_MFA, "auth_time": now}


@pytest.mark.parametrize("forge,message", [
    ("none", "ID token signature refused (unsupported_algorithm)"),
    ("hs256-public-key", "ID token signature refused (unsupported_algorithm)"),
    ("bad-signature", "ID token signature refused (bad_signature)"),
    ("garbage", "ID token is malformed"),
])
async def test_forged_id_tokens_are_refused_at_the_callback(fa, provider, forge, message):
    """alg none, and HS256 keyed with the provider's public key (algorithm confusion), served by
    the provider's token endpoint for a login that is otherwise valid (state, nonce, code)."""
    from joserfc.jwk import RSAKey

    b, ctx = fa
    authorize = await b.start("http://app.test/")
    rsa = next(k for k in provider.jwks()["keys"] if k["kty"] == "RSA")
    claims = _claims_for(provider, authorize)
    token = {
        "none": lambda: _forge({"alg": "none", "kid": rsa["kid"]}, claims, None),
        "hs256-public-key": lambda: _forge({"alg": "HS256", "kid": rsa["kid"]}, claims,
                                           RSAKey.import_key(rsa).as_pem(private=False)),
        "bad-signature": lambda: _forge({"alg": "RS256", "kid": rsa["kid"]}, claims, b"x"),
        "garbage": lambda: "not.a.jwt",
    }[forge]()
    provider.next_login("mallory", ACR_MFA, id_token_raw=token)
    r = await b.get(provider.user_agent().follow(authorize))
    assert r.status == 401
    assert f"<p>{message}</p>" in await r.text()
    assert b.session(ctx) is None


async def test_discovery_and_keys_are_cached_and_unknown_kids_refetch_at_most_once(fa, provider):
    b, ctx = fa
    client = b.app[CLIENT]
    fetches = count_fetches(client)
    for _ in range(2):
        b.http.cookie_jar.clear()
        assert (await b.login("http://app.test/", "alice", ACR_PASSWORD)).status == 302
    assert fetches.count("/jwks") <= 1 and fetches.count("/.well-known/openid-configuration") <= 1
    client.jwks_min_interval = 2.0
    await asyncio.sleep(2.1)
    fetches.clear()
    # A token signed with a kid the cached keys do not have: one refetch (the provider may have rotated) ...
    for i in range(2):
        authorize = await b.start("http://app.test/&level=mfa")
        provider.next_login("alice", ACR_MFA, id_token_raw=_rs256(_claims_for(provider, authorize), "gone"))
        r = await b.get(provider.user_agent().follow(authorize))
        assert r.status == 401
        assert "ID token signature refused" in await r.text()
        # ... and not another within jwks_min_interval.
        assert fetches.count("/jwks") == 1, (i, fetches)
    # Concurrent unknown-kid refetches share one request.
    client.jwks_min_interval = 0
    fetches.clear()
    await asyncio.gather(*(client._key_set(refresh=True) for _ in range(5)))
    assert fetches == ["/jwks"]
    # Keys older than keys_ttl are fetched again at the next sign-in.
    client.keys_ttl = 0
    fetches.clear()
    b.http.cookie_jar.clear()
    assert (await b.login("http://app.test/", "alice", ACR_PASSWORD)).status == 302
    assert fetches.count("/jwks") == 1


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


async def test_state_present_but_different(fa, provider):
    """A login cookie that opens but belongs to another login (moved under this state's name)."""
    b, _ = fa
    authorize = await b.start("http://app.test/")
    (name, value), = b.login_cookies().items()
    other = "x" * 32
    r = await b.get(f"/oauth2/callback?code=c&state={other}",
                    headers={"Cookie": f"{login_cookie_name('forwardauth', other)}={value}"})
    assert r.status == 400
    assert "<p>State mismatch; start again.</p>" in await r.text()
    assert name == login_cookie_name("forwardauth", q(authorize)["state"])


async def test_a_long_rd_gets_a_clear_page(fa):
    b, _ = fa
    base = "http://app.test/"
    ok = base + "a" * (MAX_LOGIN_RD - len(base))
    assert (await b.start(ok)).startswith(b.op.issuer)
    for length in (MAX_LOGIN_RD + 1, 3000, 4096):
        r = await b.get(f"/oauth2/start?rd={base + 'a' * (length - len(base))}")
        assert r.status == 400
        assert (f"<p>The address to return to after signing in is {length} characters long; at most 2000 are "
                "kept during a sign-in. Open a shorter address of the site and sign in from there.</p>") \
            in await r.text()
        assert "Set-Cookie" not in r.headers


async def test_login_cookies_are_capped_oldest_first(fa, provider):
    b, ctx = fa
    authorizes = []
    for i in range(6):
        authorizes.append(await b.start(f"http://app.test/tab{i}"))
        assert len(b.login_cookies()) == min(i + 1, 4)
    states = {login_cookie_name("forwardauth", q(a)["state"]) for a in authorizes}
    assert set(b.login_cookies()) == {login_cookie_name("forwardauth", q(a)["state"]) for a in authorizes[2:]}
    assert set(b.login_cookies()) <= states
    # The oldest tab's login is gone: a clear refusal, not a header-size error.
    provider.next_login("alice", ACR_PASSWORD)
    r = await b.get(provider.user_agent().follow(authorizes[0]))
    assert r.status == 400
    assert "does not belong to a login started in this browser (state mismatch or expired)" in await r.text()
    provider.next_login("alice", ACR_PASSWORD)
    r = await b.get(provider.user_agent().follow(authorizes[5]))
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/tab5")


async def test_long_rd_login_cookies_stay_within_the_budget(fa, provider):
    """Five ~3 KB login cookies used to exceed the 8 KB Cookie header limit (a bare 400 at the callback)."""
    b, ctx = fa
    await b.login("http://app.test/", "alice", ACR_PASSWORD, groups=["g" * 200] * 8)  # a big session cookie
    authorizes = [await b.start(f"http://app.test/{i}/" + "a" * 1900 + "&level=mfa") for i in range(5)]
    cookies = b.login_cookies()
    assert len(cookies) == 1 and sum(len(k) + len(v) + 2 for k, v in cookies.items()) <= 3500
    provider.next_login("alice", ACR_MFA)
    r = await b.get(provider.user_agent().follow(authorizes[-1]))
    assert r.status == 302 and r.headers["Location"].startswith("http://app.test/4/aaa")
    assert b.login_cookies() == {}


async def test_login_cookie_is_samesite_lax_even_when_the_session_is_strict(fa_port, provider):
    server, ctx = await _server(fa_port, provider, session_extra=", same_site: strict")
    assert '<meta http-equiv="refresh" content="0;url=http://app.test/?a=&#39;&amp;b=&#34;">' \
        in continue_to("http://app.test/?a='&b=\"").text
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            b = Browser(f"http://127.0.0.1:{fa_port}", provider, http)
            r = await b.get("/oauth2/start?rd=http://app.test/")
            state = q(r.headers["Location"])["state"]
            name = login_cookie_name("forwardauth", state)
            value = b.login_cookies()[name]
            assert r.headers.getall("Set-Cookie") == [
                f"{name}={value}; Path=/oauth2/; Max-Age=600; HttpOnly; SameSite=Lax"]
            provider.next_login("alice", ACR_PASSWORD)
            r = await b.get(provider.user_agent().follow(r.headers["Location"]))
            # Not a 302: a redirect chain that began at the provider would not carry the Strict
            # session cookie to the app (which would start the sign-in again); this page's own
            # navigation does.
            assert (r.status, r.headers["Cache-Control"]) == (200, "no-store")
            assert '<meta http-equiv="refresh" content="0;url=http://app.test/">' in await r.text()
            session_set, login_cleared = r.headers.getall("Set-Cookie")
            assert re.fullmatch(r"fa=[^;]+; Path=/; Max-Age=\d+; HttpOnly; SameSite=Strict", session_set)
            assert login_cleared == f"{name}=; Path=/oauth2/; Max-Age=0; HttpOnly; SameSite=Lax"
    finally:
        await server.close()


async def test_userinfo_shows_an_upstream_session(fa, provider):
    b, ctx = fa
    before = int(time.time())
    await b.login("http://app.test/", "dora", ACR_MFA, email="dora@example.org", name="Dora", groups=["ops"])
    r = await b.get("/oauth2/userinfo")
    assert (r.status, r.headers["Cache-Control"]) == (200, "no-store")
    info = await r.json()
    s = b.session(ctx)
    assert info == {"user": "dora", "email": "dora@example.org", "name": "Dora", "groups": ["ops"], "level": "mfa",
                    "proven": {"mfa": int(s.proofs["mfa"])}, "issued_at": int(s.iat), "expires_at": int(s.exp),
                    "source": "oidc"}
    assert before - 1 <= info["proven"]["mfa"] <= time.time()


async def test_provider_userinfo_fills_in_email_and_groups(fa, provider):
    """No email (nor groups) in the ID token: the userinfo endpoint's, with a single group name kept whole."""
    b, ctx = fa
    r = await b.login("http://app.test/", "erin", ACR_PASSWORD, groups="admins",
                      id_token_omit=["email", "groups"])
    assert r.status == 302
    s = b.session(ctx)
    assert (s.email, s.groups) == ("erin@example.com", ("admins",))


async def test_sign_ins_and_refusals_are_in_the_audit_log(fa, provider, tmp_path):
    from forwardauth.services.audit import AuditLog

    b, ctx = fa
    ctx.audit = AuditLog(str(tmp_path / "audit.log"))
    authorize = await b.start("http://app.test/page?secret=1")
    provider.next_login("alice", ACR_PASSWORD)
    callback = provider.user_agent().follow(authorize)
    assert (await b.get(callback)).status == 302
    assert (await b.get(callback)).status == 400  # replayed (its login cookie is gone)
    ctx.audit.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(d["event"], d["user"], d["host"], d["path"], d["level"], d["reason"]) for d in lines] == [
        ("signin_ok", "alice", "app.test", "/page", "password", "oidc: proved password"),
        ("signin_refused", None, None, None, None, "oidc: This sign-in answer does not belong to a login started in "
                                                   "this browser (state mismatch or expired)."),
    ]
    text = (tmp_path / "audit.log").read_text()
    assert q(callback)["code"] not in text and q(callback)["state"] not in text


async def test_oidc_settings_stay_those_the_app_started_with(fa, fa_port, provider):
    """The provider client and routes are made at start: a reload changing `oidc:` applies after a restart."""
    b, ctx = fa
    changed = _config(fa_port, provider.issuer, provider.client_secret).sections["oidc"]
    changed = replace(changed, client_id="someone-else")
    cfg = ctx.runtime.config
    ctx.runtime = Runtime.build(replace(cfg, sections={**cfg.sections, "oidc": changed}))
    assert q(await b.start("http://app.test/"))["client_id"] == "forwardauth"
    ctx.runtime = Runtime.build(replace(cfg, sections={k: v for k, v in cfg.sections.items() if k != "oidc"}))
    r = await b.login("http://app.test/", "alice", ACR_PASSWORD)
    assert (r.status, r.headers["Location"]) == (302, "http://app.test/")


async def test_a_refused_request_is_not_an_outage(fa, provider):
    """A 4xx (say, userinfo refusing a token) says nothing about the provider being down; a 5xx or no answer does."""
    b, _ = fa
    client = b.app[CLIENT]
    client.health_ttl = 0
    with pytest.raises(ProviderDown) as exc:
        await client._get_json(provider.issuer + "/no-such-document")
    assert str(exc.value) == f"provider answered 404 for {provider.issuer}/no-such-document"
    assert (await b.start("http://app.test/")).startswith(provider.issuer)
    with pytest.raises(ProviderDown):
        await client._get_json("http://127.0.0.1:1/unreachable")
    r = await b.get("/oauth2/start?rd=http://app.test/")
    assert r.status == 502
