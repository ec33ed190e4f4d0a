"""The aiohttp adapter, in process: exact answers for each endpoint and bad input."""

import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app
from forwardauth.core.runtime import Runtime
from forwardauth.state.memory import MemoryStore
from forwardauth.web.context import CTX

from .conftest import BASE, make_config

POLICY = """
policy:
  rules:
    - {paths: [/public/], allow: anonymous}
    - {paths: [/admin/], level: mfa, max_age: 10m}
    - {level: password}
"""


@pytest.fixture
async def client():
    rt = Runtime.build(make_config(POLICY))
    store = MemoryStore()
    app = build_app(rt, store)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        c.rt, c.store, c.ctx = rt, store, app[CTX]
        yield c


def cookie(c, user="alice", level="password", **kw):
    s = c.rt.codec.new(user, level, time.time(), **kw)
    return {"Cookie": f"fa={c.rt.codec.seal(s)}"}


def nginx(url, method="GET", **extra):
    return {"X-Original-URL": url, "X-Original-Method": method, **extra}


def traefik(host, uri, method="GET", **extra):
    return {"X-Forwarded-Method": method, "X-Forwarded-Proto": "https", "X-Forwarded-Host": host,
            "X-Forwarded-Uri": uri, **extra}


async def test_allow_with_identity_headers(client):
    r = await client.get("/auth/nginx", headers={**nginx("https://app.test/x"), **cookie(client, groups=("g1",))})
    assert r.status == 200
    assert r.headers["X-Auth-Request-User"] == "alice"
    assert r.headers["Remote-Groups"] == "g1"
    assert "Set-Cookie" not in r.headers


async def test_anonymous_route_has_no_identity(client):
    r = await client.get("/auth/traefik", headers={**traefik("app.test", "/public/a"), **cookie(client)})
    assert r.status == 200
    assert "X-Auth-Request-User" not in r.headers


async def test_not_signed_in_browser_traefik_redirects(client):
    r = await client.get("/auth/traefik", headers=traefik("app.test", "/x?a=b", Accept="text/html"),
                         allow_redirects=False)
    assert r.status == 302
    assert r.headers["Location"] == "https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.test%2Fx%3Fa%3Db"


async def test_not_signed_in_nginx_is_401(client):
    r = await client.get("/auth/nginx", headers=nginx("https://app.test/x", Accept="text/html"))
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="forwardauth"'
    assert r.headers["X-Forwardauth-Location"].startswith("https://auth.example.com/oauth2/start?rd=")


async def test_step_up_challenge(client):
    r = await client.get("/auth/traefik", headers={**traefik("app.test", "/admin/"), **cookie(client)})
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith(
        'Bearer realm="forwardauth", error="insufficient_user_authentication"')
    assert 'acr_values="urn:acr:mfa urn:acr:mfa2", max_age=600' in r.headers["WWW-Authenticate"]
    assert (await r.json())["required_level"] == "mfa"


@pytest.mark.parametrize("value", ["garbage", "k1.AAAA", "k1." + "A" * 5000, "k2.abc.def", "k1.%%%"])
async def test_bad_cookies_are_not_signed_in(client, value):
    r = await client.get("/auth/nginx", headers={**nginx("https://app.test/x"), "Cookie": f"fa={value}"})
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="forwardauth"'


async def test_malformed_headers_are_400(client):
    """Traefik and Caddy pass a 400 through; nginx's auth_request would make
    it a 500, so /auth/nginx says 403 with the 400 and its message in headers
    that the shipped snippet turns into the client's 400."""
    r = await client.get("/auth/nginx", headers={"X-Original-URL": "not a url", "X-Original-Method": "GET"})
    assert (r.status, r.headers["X-Forwardauth-Status"], r.headers["X-Forwardauth-Error"]) == (
        403, "400", "original URL contains spaces or control characters")
    assert await r.text() == "400 Bad Request: original URL contains spaces or control characters\n"
    r = await client.get("/auth/traefik", headers=traefik("app.test", "/x", method=""))
    assert (r.status, await r.text()) == (400, "400 Bad Request: missing or malformed method header\n")
    assert "X-Forwardauth-Status" not in r.headers


async def test_revocation_via_epoch_and_session_id(client):
    h = {**nginx("https://app.test/x"), **cookie(client)}
    assert (await client.get("/auth/nginx", headers=h)).status == 200
    await client.store.set_epoch("alice", time.time())
    await client.ctx.revocations.refresh(client.store)
    assert (await client.get("/auth/nginx", headers=h)).status == 401
    s = client.rt.codec.new("bob", "password", time.time())
    hb = {**nginx("https://app.test/x"), "Cookie": f"fa={client.rt.codec.seal(s)}"}
    assert (await client.get("/auth/nginx", headers=hb)).status == 200
    await client.store.revoke(s.sid, s.exp)
    await client.ctx.revocations.refresh(client.store)
    assert (await client.get("/auth/nginx", headers=hb)).status == 401


async def test_refresh_sets_cookie_after_half_the_idle_window(client):
    now = time.time()
    s = client.rt.codec.new("alice", "password", now - 400)
    s = client.rt.codec.touched(s, now - 301)  # idle_timeout is 10m in the test config
    r = await client.get("/auth/nginx", headers={**nginx("https://app.test/x"), "Cookie": f"fa={client.rt.codec.seal(s)}"})
    assert r.status == 200
    sc = r.headers["Set-Cookie"]
    assert sc.startswith("fa=") and "HttpOnly" in sc and "SameSite=Lax" in sc and "Path=/" in sc
    value = sc.split(";")[0][3:]
    assert client.rt.codec.open(value, now).session.seen >= now - 1


async def test_untrusted_peer_is_refused():
    base = BASE.replace("trusted_proxies: [127.0.0.1/32]", "trusted_proxies: [10.0.0.0/8]")
    rt = Runtime.build(make_config(POLICY, base))
    async with TestClient(TestServer(build_app(rt, MemoryStore()), host="127.0.0.1")) as c:
        r = await c.get("/auth/nginx", headers=nginx("https://app.test/public/"))
        assert r.status == 403
        assert await r.text() == "403 Forbidden: 127.0.0.1 is not in server.trusted_proxies\n"


async def test_health_and_ready(client):
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    assert (r.status, await r.text()) == (200, "ready\n")
    # A short outage (past three refresh intervals, within tokens.stale_grace,
    # 30 s by default): decisions still answer from memory, so still ready.
    client.ctx.revocations.last_ok -= 10
    client.ctx.revocations.last_error = "down"
    r = await client.get("/readyz")
    assert (r.status, await r.text()) == (200, "ready\n")
    # Past the grace: not ready, and the tokens part says what is refused.
    client.ctx.revocations.last_ok -= 3590  # 3600 s in all
    r = await client.get("/readyz")
    assert (r.status, await r.text()) == (
        503, "not ready: state store unreachable for 1h (down); past tokens.stale_grace (30s) bearer tokens "
             "and revocation-sensitive routes are refused\n")


async def test_metrics_count_outcomes(client):
    series = 'forwardauth_decisions_total{endpoint="nginx",outcome="unauthenticated"} '

    async def count() -> float:
        text = await (await client.get("/metrics")).text()
        return float(text.split(series, 1)[1].split("\n", 1)[0])

    before = await count()
    await client.get("/auth/nginx", headers=nginx("https://app.test/x"))
    await client.get("/auth/nginx", headers=nginx("https://app.test/y"))
    assert await count() == before + 2


async def test_reload_keeps_old_config_when_new_one_is_invalid(tmp_path):
    from forwardauth.composition import load_config

    path = tmp_path / "c.yaml"
    path.write_text(BASE + POLICY)
    rt = Runtime.build(load_config(path))
    app = build_app(rt, MemoryStore())
    ctx = app[CTX]
    path.write_text(BASE + "policy: {rules: [{level: nope}]}\n")
    assert ctx.reload() is False and ctx.runtime is rt
    path.write_text(BASE + "policy: {default: anonymous}\n")
    assert ctx.reload() is True and ctx.runtime.config.policy.rules == ()


async def _raw(port: int, path: bytes, headers: bytes) -> bytes:
    """One request written byte for byte (a client library would re-encode)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def _status_and_body(data: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize("endpoint,headers,status,body", [
    (b"/auth/traefik", b"X-Forwarded-Method: GET\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Uri: /x\xff\r\n",
     400, b"400 Bad Request: path is not valid UTF-8 after percent-decoding\n"),
    (b"/auth/caddy", b"X-Forwarded-Method: GET\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Uri: /public/?\xff\r\n",
     200, b""),
    (b"/auth/nginx", b"X-Original-Method: GET\r\nX-Original-URL: https://app.test/x\xff\r\n",
     403, b"400 Bad Request: path is not valid UTF-8 after percent-decoding\n"),
    (b"/auth/nginx", b"X-Original-Method: GET\r\nX-Original-URL: https://app.test/public/caf\xc3\xa9\r\n",
     200, b""),
    (b"/auth/nginx", b"X-Original-Method: GET\r\nX-Original-URL: https://\xc3\xa9.test/\r\n",
     403, b"400 Bad Request: malformed host\n"),
])
async def test_raw_non_ascii_bytes_never_500(client, endpoint, headers, status, body):
    got, head, text = _status_and_body(await _raw(client.server.port, endpoint, headers))
    assert (got, text) == (status, body), head


async def test_raw_non_ascii_query_redirects_with_it_encoded(client):
    data = await _raw(client.server.port, b"/auth/nginx",
                      b"X-Original-Method: GET\r\nX-Original-URL: https://app.test/x?\xff\r\n"
                      b"Cookie: fa=k1.\xff\xfe\r\n")
    status, head, _ = _status_and_body(data)
    assert status == 401, head
    assert (b"X-Forwardauth-Location: https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.test%2Fx%3F%25FF\r\n"
            in head), head


class _DownStore(MemoryStore):
    """A state store that never answers."""

    async def revocation_version(self):
        from forwardauth.state.base import StoreUnavailable

        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize("up_to", [None, "hardware"])
async def test_store_unread_since_startup_refuses_sessions_not_anonymous_routes(up_to):
    """Without one good read the revocation snapshot is empty: a revoked session would
    pass. Until the store has been read, sessions are refused (503) and /readyz says why;
    anonymous routes still answer. Also when tokens.stale_sessions_up_to lets sessions
    through a store outage: before the first read nothing is known."""
    extra = f"tokens: {{stale_sessions_up_to: {up_to}}}\n" if up_to else ""
    rt = Runtime.build(make_config(POLICY + extra))
    async with TestClient(TestServer(build_app(rt, _DownStore()), host="127.0.0.1")) as c:
        r = await c.get("/readyz")
        assert (r.status, await r.text()) == (503, "not ready: state store not read yet\n")
        s = rt.codec.new("alice", "password", time.time())
        h = {**nginx("https://app.test/x"), "Cookie": f"fa={rt.codec.seal(s)}"}
        r = await c.get("/auth/traefik", headers={**traefik("app.test", "/x"), "Cookie": h["Cookie"]})
        assert r.status == 503, await r.text()
        assert "X-Auth-Request-User" not in r.headers
        assert (r.headers["Retry-After"], await r.text()) == (
            "5", "503 Service Unavailable: the state store has not been read yet, so revoked sessions cannot be "
                 "told apart; signed-in requests are refused until it has\n")
        # to nginx: a 403 saying 503, which the shipped snippet answers as a 503 (auth_request makes a 503 a 500)
        r = await c.get("/auth/nginx", headers=h)
        assert (r.status, r.headers["X-Forwardauth-Status"], r.headers["Retry-After"]) == (403, "503", "5")
        assert r.headers["X-Forwardauth-Error"] == ("the state store has not been read yet, so revoked sessions "
                                                    "cannot be told apart; signed-in requests are refused until it has")
        assert "X-Auth-Request-User" not in r.headers
        r = await c.get("/auth/nginx", headers={**nginx("https://app.test/public/a"), "Cookie": h["Cookie"]})
        assert (r.status, await r.text()) == (200, "")


@pytest.mark.parametrize("uri", ["/admin;x/", "/admin;jsessionid=1/panel", "/ADMIN/x", "/Admin./x", "/admin%2Fx",
                                 "/admin\\x", "//admin/x", "/admin%3Fx", "/public/x?_method=DELETE"])
async def test_every_reading_of_an_admin_path_needs_mfa(client, uri):
    """/admin/ needs mfa: a password session asking for a spelling that some
    app routes under /admin/ (path parameters, case, encoded or backslash
    separators, repeated slashes, a decoded `?`) gets the step-up challenge."""
    r = await client.get("/auth/traefik", headers={**traefik("app.test", uri), **cookie(client)})
    if uri.startswith("/public/"):  # control: the override names a method the rule allows
        assert r.status == 200
        return
    assert r.status == 401, uri
    assert (await r.json())["required_level"] == "mfa"


@pytest.mark.parametrize("uri,message", [
    ("/public/..;/admin/", "ambiguous path: dot segment"),
    ("/admin/..%2fpublic/x", "ambiguous path: dot segment"),
    ("/public/%2e%2e/admin", "ambiguous path: dot segment"),
    ("/public/x#/../../admin/x", "ambiguous path: '#' in the path"),
    ("/public/%252e%252e/admin", "ambiguous path: double percent-encoding"),
    ("/public/%u002e%u002e/admin", "ambiguous path: '%' not followed by two hex digits"),
])
async def test_ambiguous_paths_are_refused_on_every_endpoint(client, uri, message):
    """Never judged, signed in or not: 400 (nginx: 403 carrying the 400), a
    log line and the ambiguous_path counter."""
    from forwardauth.web.metrics import DECISIONS

    before = DECISIONS.count("traefik", "ambiguous_path")
    for h in ({}, cookie(client, level="mfa")):
        r = await client.get("/auth/traefik", headers={**traefik("app.test", uri), **h})
        assert (r.status, await r.text()) == (400, f"400 Bad Request: {message}\n")
        r = await client.get("/auth/caddy", headers={**traefik("app.test", uri), **h})
        assert (r.status, await r.text()) == (400, f"400 Bad Request: {message}\n")
        r = await client.get("/auth/nginx", headers={**nginx("https://app.test" + uri), **h})
        assert (r.status, r.headers["X-Forwardauth-Status"], r.headers["X-Forwardauth-Error"]) == (403, "400", message)
        assert "X-Auth-Request-User" not in r.headers
    assert DECISIONS.count("traefik", "ambiguous_path") == before + 2


async def test_a_refusal_is_logged_without_the_query(client, caplog):
    import logging

    from forwardauth.core import authorize

    authorize._REFUSALS.__init__()
    with caplog.at_level(logging.WARNING, logger="forwardauth"):
        r = await client.get("/auth/traefik", headers=traefik("app.test", "/a/../b?token=secret"))
    assert r.status == 400
    (rec,) = [r for r in caplog.records if r.getMessage() == "ambiguous path refused"]
    assert rec.fields == {"endpoint": "traefik", "reason": "ambiguous path: dot segment", "path": "/a/../b"}


async def test_refusal_log_lines_are_throttled(client, caplog):
    import logging

    from forwardauth.core import authorize

    authorize._REFUSALS.__init__()
    with caplog.at_level(logging.WARNING, logger="forwardauth"):
        for _ in range(25):
            await client.get("/auth/traefik", headers=traefik("app.test", "/a/../b"))
    lines = [r for r in caplog.records if r.getMessage() == "ambiguous path refused"]
    assert len(lines) == 10
    assert authorize._REFUSALS.suppressed == 15
