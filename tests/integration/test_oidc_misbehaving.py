"""The OpenID client against a provider that misbehaves on purpose (harness/rogue_op.py).

forwardauth runs in process (aiohttp TestServer on a free loopback port). Each
case: /oauth2/start, then forwardauth's callback with the provider's answer
shaped by the test; the exact page (status and message) or the sign-in.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from forwardauth.composition import build_app, parse_config
from forwardauth.core.runtime import Runtime
from forwardauth.oidc.handlers import CLIENT
from forwardauth.state.memory import MemoryStore
from forwardauth.web.context import CTX
from harness.procs import free_port
from harness.rogue_op import CLIENT_ID, CLIENT_SECRET, RogueProvider

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
  - {{name: mfa, acr: ["urn:forwardauth:acr:mfa"]}}
oidc:
  issuer: {issuer}
  client_id: {client_id}
  client_secret: {secret}
  id_token_algorithms: [ES256]
  http_timeout: 5s
policy:
  rules:
    - {{hosts: [app.test], level: password}}
"""


@pytest.fixture
async def op():
    provider = await RogueProvider().start()
    yield provider
    await provider.stop()


class Fa:
    def __init__(self, port: int, http: aiohttp.ClientSession, app, op: RogueProvider):
        self.base, self.http, self.op = f"http://127.0.0.1:{port}", http, op
        self.ctx, self.client = app[CTX], app[CLIENT]

    def provider_marked_down(self) -> bool:
        return self.client._down_at > self.client._ok_at

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        r = await self.http.get(path if path.startswith("http") else self.base + path, allow_redirects=False)
        return r.status, await r.text(), r

    async def start(self) -> dict[str, str]:
        status, text, r = await self.get("/oauth2/start?rd=http://app.test/")
        assert status == 302, text
        return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}

    async def login(self, **claims) -> tuple[int, str, aiohttp.ClientResponse]:
        """Start; the provider answers with valid claims for this login (`claims` laid over them)."""
        q = await self.start()
        self.op.claims = self.op.id_claims(q["nonce"], **claims)
        return await self.get(f"/oauth2/callback?code=c1&state={q['state']}")

    def session(self):
        cookie = self.http.cookie_jar.filter_cookies(URL(self.base)).get("fa")
        return self.ctx.runtime.codec.open(cookie.value if cookie else None, time.time()).session


@pytest.fixture
async def fa(op):
    port = free_port()
    cfg = parse_config(CONFIG.format(port=port, issuer=op.issuer, client_id=CLIENT_ID, secret=CLIENT_SECRET), "t.yaml")
    app = build_app(Runtime.build(cfg), MemoryStore())
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Fa(port, http, app, op)
    await server.close()


def message(text: str) -> str:
    return text.split("<p>", 1)[1].split("</p>", 1)[0] if "<p>" in text else text


async def test_a_plain_provider_signs_in(fa):
    status, text, r = await fa.login()
    assert (status, r.headers.get("Location")) == (302, "http://app.test/"), text
    assert fa.session().sub == "alice"


@pytest.mark.parametrize("split", [{"token"}, {"jwks"}, {"discovery"}, {"discovery", "jwks", "token"}])
async def test_answers_that_arrive_in_pieces_are_read_whole(fa, split):
    """Was: "token endpoint: answer is not JSON", 502 (content.read(n) returned the first piece only);
    a JWKS in pieces also marked the provider down for 5 s."""
    fa.op.split = split
    status, text, r = await fa.login()
    assert (status, r.headers.get("Location")) == (302, "http://app.test/"), message(text)
    assert fa.session().sub == "alice"
    assert not fa.provider_marked_down()
    fa.http.cookie_jar.clear()  # signed out: the next start goes to the provider
    status, text, r = await fa.get("/oauth2/start?rd=http://app.test/x")
    assert status == 302 and r.headers["Location"].startswith(fa.op.issuer + "/authorize?"), message(text)


async def test_userinfo_in_pieces_is_read_whole(fa):
    fa.op.split = {"userinfo"}
    fa.op.userinfo = {"sub": "alice", "email": "alice@example.com"}
    status, text, r = await fa.login()
    assert status == 302, message(text)
    assert fa.session().email == "alice@example.com"


async def test_a_jwks_in_pieces_does_not_mark_the_provider_down(fa):
    fa.op.split = {"jwks"}
    status, text, _ = await fa.login()
    assert status == 302, message(text)
    assert not fa.provider_marked_down()
    fa.http.cookie_jar.clear()
    status, _, _ = await fa.login()
    assert status == 302
    assert fa.op.hits.get("jwks") == 1  # fetched once, then kept


async def test_an_id_token_not_valid_yet_is_refused(fa):
    status, text, _ = await fa.login(nbf=int(time.time()) + 600)
    assert (status, message(text)) == (401, "ID token not valid yet (nbf)")
    assert fa.session() is None


async def test_nbf_within_the_clock_skew_is_accepted(fa):
    status, text, _ = await fa.login(nbf=int(time.time()) + 30)
    assert status == 302, message(text)


async def test_a_non_numeric_nbf_is_refused(fa):
    status, text, _ = await fa.login(nbf="soon")
    assert (status, message(text)) == (401, "ID token not valid yet (nbf)")


async def test_a_duplicate_claim_is_refused_not_read_last_wins(fa):
    """`"sub":"alice", ..., "sub":"admin"` signed by the provider: was signed in as admin."""
    q = await fa.start()
    now = int(time.time())
    fa.op.payload = (f'{{"iss":"{fa.op.issuer}","aud":"{CLIENT_ID}","sub":"alice","exp":{now + 300},"iat":{now},'
                     f'"nonce":"{q["nonce"]}","acr":"urn:forwardauth:acr:password","sub":"admin"}}').encode()
    status, text, _ = await fa.get(f"/oauth2/callback?code=c1&state={q['state']}")
    assert (status, message(text)) == (401, "ID token claims refused (a key appears twice in one object)")
    assert fa.session() is None


async def test_a_duplicate_key_in_the_token_response_is_refused(fa, op):
    q = await fa.start()
    fa.op.claims = fa.op.id_claims(q["nonce"])
    real = op._send

    async def twice(request, name, data):  # {"id_token": A, ..., "id_token": B}
        if name != "token":
            return await real(request, name, data)
        from aiohttp import web
        body = '{"id_token": "x", "access_token": "a", "id_token": "' + data["id_token"] + '"}'
        return web.Response(text=body, content_type="application/json")

    op._send = twice
    status, text, _ = await fa.get(f"/oauth2/callback?code=c1&state={q['state']}")
    assert (status, message(text)) == (
        502, "The identity provider cannot be reached: token endpoint: answer refused (a key appears twice in "
             "one object)")


@pytest.mark.parametrize("sub", ["admin\x00", "ad\x1bmin", "admin\u200b", "line\nbreak", "tab\there", "del\x7f"])
async def test_a_subject_with_control_or_invisible_characters_is_refused(fa, sub):
    """The identity headers drop control characters, so "admin\\x00" would reach the app as "admin"."""
    status, text, _ = await fa.login(sub=sub)
    assert (status, message(text)) == (401, "ID token subject contains control or invisible characters")
    assert fa.session() is None


async def test_an_email_with_control_characters_is_dropped(fa):
    status, text, _ = await fa.login(email="alice@example.com\r\nX-Evil: 1")
    assert status == 302, message(text)
    assert fa.session().email is None


async def test_an_id_token_header_with_a_duplicate_key_is_refused(fa):
    import base64

    q = await fa.start()
    claims = fa.op.id_claims(q["nonce"])
    real = fa.op.id_token

    def forged() -> str:
        token = real()
        head = base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"other","kid":"rogue-1"}').rstrip(b"=").decode()
        return head + token[token.index("."):]

    fa.op.claims = claims
    fa.op.id_token = forged
    status, text, _ = await fa.get(f"/oauth2/callback?code=c1&state={q['state']}")
    assert (status, message(text)) == (401, "ID token is malformed")


@pytest.mark.parametrize("depth, expected", [
    (100, "ID token claims refused (nested deeper than 16 levels)"),
    (3000, "ID token is malformed"),  # past the JSON parser's recursion limit: refused, not a 500
])
async def test_deeply_nested_claims_are_refused(fa, depth, expected):
    q = await fa.start()
    now = int(time.time())
    fa.op.payload = (f'{{"iss":"{fa.op.issuer}","aud":"{CLIENT_ID}","sub":"alice","exp":{now + 300},"iat":{now},'
                     f'"nonce":"{q["nonce"]}","x":' + "[" * depth + "]" * depth + "}").encode()
    status, text, _ = await fa.get(f"/oauth2/callback?code=c1&state={q['state']}")
    assert (status, message(text)) == (401, expected)
