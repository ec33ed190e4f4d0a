"""The decision memo: a remembered answer is given only while it is still the right one.

Each test makes a request that gets remembered, changes one thing the answer
depends on (revocation, the clock, the store's health, the config, the
session) and asserts the exact answer that follows. `decide` is wrapped to
count calls, so "served from memory" is observed, not assumed.
"""

import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app, parse_config
from forwardauth.core import authorize
from forwardauth.core.memo import Memo
from forwardauth.core.runtime import Runtime
from forwardauth.state.memory import MemoryStore
from forwardauth.web import decision_endpoints as endpoint
from forwardauth.web.app import DECISIONS_BY_PATH
from forwardauth.web.context import CTX
from forwardauth.web.decision_endpoints import decisions_first

from .conftest import BASE, make_config

POLICY = """
policy:
  rules:
    - {paths: [/public/], allow: anonymous}
    - {paths: [/admin/], level: mfa, max_age: 10m}
    - {paths: [/closed/], deny: true}
    - {level: password}
"""
URL = "https://app.test/x"


@pytest.fixture
def decisions(monkeypatch):
    calls = []
    real = authorize.decide

    def counting(*args, **kw):
        calls.append(args[0].path)
        return real(*args, **kw)

    monkeypatch.setattr(authorize, "decide", counting)
    return calls


@pytest.fixture
def clock(monkeypatch):
    """The decision endpoints' clock (web.decision_endpoints' time.time), settable; starts at the real time."""

    class Clock:
        now = time.time()

    monkeypatch.setattr(endpoint.time, "time", lambda: Clock.now)
    return Clock


@pytest.fixture
async def client():
    rt = Runtime.build(make_config(POLICY))
    store = MemoryStore()
    app = build_app(rt, store)
    # No cookie jar: each request carries exactly the Cookie header the test gives.
    async with TestClient(TestServer(app, host="127.0.0.1"), cookie_jar=aiohttp.DummyCookieJar()) as c:
        c.rt, c.store, c.ctx = rt, store, app[CTX]
        yield c


def cookie(c, user="alice", level="password", now=None, **kw):
    s = c.rt.codec.new(user, level, time.time() if now is None else now, **kw)
    return {"Cookie": f"fa={c.rt.codec.seal(s)}"}


def nginx(url=URL, **extra):
    return {"X-Original-URL": url, "X-Original-Method": "GET", **extra}


async def get(c, headers):
    r = await c.get("/auth/nginx", headers=headers)
    return r.status, r.headers.get("X-Auth-Request-User"), r.headers.get("Set-Cookie")


async def test_repeated_allow_is_answered_from_memory(client, decisions):
    h = {**nginx(), **cookie(client)}
    assert await get(client, h) == (200, "alice", None)
    assert await get(client, h) == (200, "alice", None)
    assert await get(client, h) == (200, "alice", None)
    assert decisions == ["/x"]


async def test_each_session_gets_its_own_answer(client, decisions):
    alice, bob = {**nginx(), **cookie(client, "alice")}, {**nginx(), **cookie(client, "bob")}
    assert await get(client, alice) == (200, "alice", None)
    assert await get(client, bob) == (200, "bob", None)
    assert await get(client, alice) == (200, "alice", None)
    assert decisions == ["/x", "/x"]


async def test_revoked_user_is_refused_even_after_a_remembered_allow(client):
    h = {**nginx(), **cookie(client)}
    assert await get(client, h) == (200, "alice", None)
    await client.store.set_epoch("alice", time.time() + 1)
    await client.ctx.revocations.refresh(client.store)
    r = await client.get("/auth/nginx", headers=h)
    assert (r.status, r.headers["WWW-Authenticate"]) == (401, 'Bearer realm="forwardauth"')


async def test_max_age_lapses_although_the_answer_was_remembered(client, clock, decisions):
    h = {**nginx("https://app.test/admin/"), **cookie(client, level="mfa", proofs={"mfa": clock.now - 590})}
    assert await get(client, h) == (200, "alice", None)
    clock.now += 5
    assert await get(client, h) == (200, "alice", None)  # still within 10 minutes: from memory
    assert decisions == ["/admin/"]
    clock.now += 10  # the proof is now 605 s old
    r = await client.get("/auth/nginx", headers=h)
    assert r.status == 401
    assert 'error="insufficient_user_authentication"' in r.headers["WWW-Authenticate"]
    assert (await r.json())["required_level"] == "mfa"


async def test_a_session_due_for_refresh_always_gets_a_fresh_cookie(client, clock, decisions):
    h = {**nginx(), **cookie(client, now=clock.now - 400)}  # idle_timeout 10m: refresh after 5m
    for _ in range(2):
        status, user, set_cookie = await get(client, h)
        assert (status, user) == (200, "alice") and set_cookie.startswith("fa=")
    assert decisions == ["/x", "/x"]


async def test_memory_is_not_used_while_the_store_does_not_answer(client, decisions):
    h = {**nginx(), **cookie(client)}
    assert await get(client, h) == (200, "alice", None)
    client.ctx.revocations.last_error = "down"
    assert await get(client, h) == (200, "alice", None)
    assert decisions == ["/x", "/x"]


async def test_denials_are_decided_every_time(client, decisions):
    h = {**nginx("https://app.test/closed/"), **cookie(client)}
    for _ in range(2):
        r = await client.get("/auth/nginx", headers=h)
        assert (r.status, await r.text()) == (403, "403 Forbidden: denied by policy\n")
    assert decisions == ["/closed/", "/closed/"]


async def test_anonymous_answer_is_remembered_without_identity(client, decisions):
    h = nginx("https://app.test/public/a")
    assert await get(client, h) == (200, None, None)
    assert await get(client, h) == (200, None, None)
    assert decisions == ["/public/a"]


async def test_a_reload_forgets_remembered_answers(client, decisions):
    h = nginx("https://app.test/public/a")  # no session: the same key before and after
    assert await get(client, h) == (200, None, None)
    client.ctx.runtime = Runtime.build(make_config("policy: {rules: [{deny: true}]}\n"))
    r = await client.get("/auth/nginx", headers=h)
    assert (r.status, await r.text()) == (403, "403 Forbidden: denied by policy\n")


async def test_other_header_values_are_other_requests(client, decisions):
    c = cookie(client)
    assert await get(client, {**nginx("https://app.test/x"), **c}) == (200, "alice", None)
    assert await get(client, {**nginx("https://app.test/public/x"), **c}) == (200, None, None)
    assert await get(client, {**nginx("https://app.test/x", **{"X-Forwarded-For": "10.0.0.1"}), **c}) == (
        200, "alice", None)
    assert decisions == ["/x", "/public/x", "/x"]


def test_tables_are_bounded():
    memo = Memo(max_entries=2)
    for i in range(5):
        memo.request(("p", (str(i),)), lambda: object())
        memo.remember(("p", (str(i),)), None, "allow", float("inf"))
    assert len(memo._requests) <= 2 and len(memo._answers) <= 2


def test_an_answer_is_not_given_for_another_session_object():
    memo = Memo()
    a, b = object(), object()
    memo.remember(("k",), a, {"X": "1"}, float("inf"))
    assert memo.answer(("k",), a, 0.0)["X"] == "1"
    assert memo.answer(("k",), b, 0.0) is None
    assert memo.answer(("k",), None, 0.0) is None


def test_an_answer_expires_at_its_deadline():
    memo = Memo()
    memo.remember(("k",), None, "allow", 100.0)
    assert memo.answer(("k",), None, 99.9) is not None
    assert memo.answer(("k",), None, 100.0) is None


async def test_decisions_first_skips_the_router_and_nothing_else():
    """With the real runner as `forwardauth serve` uses it: /auth/* answers without
    the app's router; every other request still goes through it."""
    rt = Runtime.build(parse_config(BASE + POLICY, "test.yaml"))
    app = build_app(rt, MemoryStore())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    through_app = []
    general = runner.server.request_handler

    async def counting(request):
        through_app.append(request.raw_path)
        return await general(request)

    runner.server.request_handler = counting
    decisions_first(runner.server, app, app[DECISIONS_BY_PATH])
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            r = await http.get(f"{base}/auth/nginx", headers=nginx("https://app.test/public/a"))
            assert r.status == 200
            r = await http.get(f"{base}/auth/traefik", headers={
                "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.test",
                "X-Forwarded-Uri": "/x"})
            assert r.status == 401
            r = await http.get(f"{base}/healthz")
            assert (r.status, await r.text()) == (200, "ok\n")
            r = await http.post(f"{base}/auth/nginx", headers=nginx("https://app.test/public/a"))
            assert r.status == 405
        assert through_app == ["/healthz", "/auth/nginx"]
    finally:
        await runner.cleanup()


def index_down(c, seconds=31.0):
    """The token index has not loaded for `seconds` (past the 30 s default grace);
    the revocation store still answers."""
    from forwardauth.tokens.api.auth import TOKENS

    index = c.app[TOKENS].index
    index.last_ok, index.last_error = time.monotonic() - seconds, "redis unreachable (ConnectionError)"
    assert c.ctx.revocations.last_error is None


async def test_a_refused_token_does_not_get_the_remembered_anonymous_answer(client):
    """The same public URL, remembered for a request without credentials: a bearer
    token that cannot be checked (index down past the grace) gets its 503."""
    h = nginx("https://app.test/public/a")
    assert await get(client, h) == (200, None, None)
    index_down(client)
    r = await client.get("/auth/nginx", headers={**h, "Authorization": "Bearer fa1_AAAA"})
    # to nginx, a 503 is a 403 saying 503 (auth_request would make it a 500; the shipped snippet answers 503)
    assert (r.status, r.headers["X-Forwardauth-Status"]) == (403, "503")
    assert "bearer tokens are refused" in await r.text()
    assert await get(client, h) == (200, None, None)  # the anonymous request itself: still 200
