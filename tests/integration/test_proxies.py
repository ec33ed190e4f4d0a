"""nginx, Traefik and Caddy, each with the shipped config, in front of the echo
app and asking the real forwardauth. Every test runs once per proxy.

What the app receives is read back from the echo app's JSON answer, so the
identity tests check what an app would really have believed.
"""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from harness.client import Reply, request
from harness.forwardauth import APP_HOST, COOKIE, MFA_ACR, STATUS_HOST

pytestmark = pytest.mark.proxy

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
API = {"Accept": "application/json"}
IDENTITY = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-groups", "x-auth-request-level",
            "x-auth-request-name", "x-auth-request-auth-time", "x-auth-request-jwt", "remote-user", "remote-email",
            "remote-groups", "remote-name")
# What a forger sends: the identity headers, and names that alias them for
# CGI/WSGI-style apps (which read X_Auth_Request_User as X-Auth-Request-User).
FORGED = {
    "X-Auth-Request-User": "admin", "X-Auth-Request-Email": "admin@evil.test", "X-Auth-Request-Groups": "admins",
    "X-Auth-Request-Level": "mfa", "X-Auth-Request-Name": "Admin", "Remote-User": "admin",
    "Remote-Groups": "admins", "Remote-Email": "admin@evil.test", "Remote-Name": "Admin",
    "X_Auth_Request_User": "admin", "Remote_User": "admin", "X-Auth_Request-Groups": "admins",
    "X.Auth.Request.User": "admin", "Remote.User": "admin", "X-Auth.Request-Level": "mfa",
    "X-Auth-Request-Jwt": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "X_Auth_Request_Jwt": "forged",
}


def get(proxy, path: str, headers: dict | None = None, cookie: str | None = None, method: str = "GET") -> Reply:
    h = dict(headers or {})
    if cookie is not None:
        h["Cookie"] = f"{COOKIE}={cookie}"
    return request(proxy.port, path, host=f"{APP_HOST}:{proxy.port}", method=method, headers=h)


def original(proxy, path: str) -> str:
    return f"http://{APP_HOST}:{proxy.port}{path}"


def identity_seen(reply: Reply) -> dict[str, list[str]]:
    """Identity headers the app got, keyed by name with "_"/"." read as "-" (as CGI would)."""
    out: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        norm = re.sub(r"[_.]", "-", name.lower())
        if norm in IDENTITY:
            out.setdefault(norm, []).append(value)
    return out


def assert_sign_in_redirect(reply: Reply, forwardauth, target: str) -> None:
    assert reply.status == 302, reply
    loc = urlsplit(reply.header("Location"))
    assert (loc.scheme, loc.netloc, loc.path) == ("http", f"auth.test:{forwardauth.port}", "/oauth2/start"), reply
    assert parse_qs(loc.query, keep_blank_values=True) == {"rd": [target]}, reply


def challenge_params(value: str) -> tuple[str, dict[str, str]]:
    """'Bearer a="x", b=3' -> ("Bearer", {"a": "x", "b": "3"})."""
    scheme, _, rest = value.partition(" ")
    params = {k: v1 if v1 else v2 for k, v1, v2 in re.findall(r'([a-z_]+)=(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme, params


def test_anonymous_route_passes_without_identity(proxy):
    reply = get(proxy, "/public/page?x=1", headers=FORGED)
    assert reply.status == 200, reply
    body = reply.json()
    assert (body["method"], body["path"], body["query"]) == ("GET", "/public/page", "x=1")
    assert identity_seen(reply) == {}, "client-sent identity headers reached the app on an anonymous route"


def test_browser_without_cookie_is_sent_to_sign_in(proxy, forwardauth):
    path = "/password/doc?a=1&b=%2Fx%20y"
    reply = get(proxy, path, headers=BROWSER)
    assert_sign_in_redirect(reply, forwardauth, original(proxy, path))


def test_api_client_without_cookie_gets_bearer_challenge(proxy):
    reply = get(proxy, "/password/doc", headers=API)
    assert reply.status == 401, reply
    assert reply.header("WWW-Authenticate") == 'Bearer realm="forwardauth"', reply
    body = reply.json()
    assert (body["error"], body["required_level"]) == ("unauthorized", "password"), reply


def test_browser_post_is_not_redirected(proxy):
    """Only navigations (GET/HEAD) are redirected: a form POST would lose its body."""
    reply = get(proxy, "/password/form", headers=BROWSER, method="POST")
    assert reply.status == 401, reply
    assert reply.header("WWW-Authenticate") == 'Bearer realm="forwardauth"', reply
    assert reply.header("Location") is None, reply


def test_password_session_reaches_password_route_with_identity(proxy, forwardauth):
    cookie = forwardauth.issue(f"alice-{proxy.name}", "password", email="alice@example.test",
                               groups=("dev", "ops"), name="Alice Liddell")
    before = int(time.time())
    reply = get(proxy, "/password/doc?v=2", headers=API, cookie=cookie)
    assert reply.status == 200, reply
    seen = identity_seen(reply)
    auth_time = seen.pop("x-auth-request-auth-time")
    user = f"alice-{proxy.name}"
    assert seen == {
        "x-auth-request-user": [user], "x-auth-request-email": ["alice@example.test"],
        "x-auth-request-groups": ["dev,ops"], "x-auth-request-level": ["password"],
        "x-auth-request-name": ["Alice Liddell"], "remote-user": [user], "remote-email": ["alice@example.test"],
        "remote-groups": ["dev,ops"], "remote-name": ["Alice Liddell"],
    }
    assert len(auth_time) == 1 and before - 60 <= int(auth_time[0]) <= before + 1, auth_time
    assert (reply.json()["path"], reply.json()["query"]) == ("/password/doc", "v=2")


def test_forged_identity_is_replaced_by_the_real_one(proxy, forwardauth):
    user = f"bob-{proxy.name}"
    cookie = forwardauth.issue(user, "password", email="bob@example.test", groups=("dev",), name="Bob")
    reply = get(proxy, "/password/x", headers={**API, **FORGED}, cookie=cookie)
    assert reply.status == 200, reply
    seen = identity_seen(reply)
    seen.pop("x-auth-request-auth-time")
    assert seen == {
        "x-auth-request-user": [user], "x-auth-request-email": ["bob@example.test"],
        "x-auth-request-groups": ["dev"], "x-auth-request-level": ["password"], "x-auth-request-name": ["Bob"],
        "remote-user": [user], "remote-email": ["bob@example.test"], "remote-groups": ["dev"],
        "remote-name": ["Bob"],
    }


def test_forged_forwarded_headers_do_not_change_the_decision(proxy):
    """A client naming a public URL in X-Forwarded-* / X-Original-* is still judged on the real one."""
    forged = {**API, "X-Forwarded-Uri": "/public/x", "X-Forwarded-Host": APP_HOST, "X-Forwarded-Method": "GET",
              "X-Original-URL": f"http://{APP_HOST}/public/x", "X-Original-URI": "/public/x",
              "X-Original-Method": "GET"}
    reply = get(proxy, "/password/secret", headers=forged)
    assert reply.status == 401, reply
    assert reply.header("WWW-Authenticate") == 'Bearer realm="forwardauth"', reply


def test_password_session_on_mfa_route_gets_step_up_challenge(proxy, forwardauth):
    cookie = forwardauth.issue(f"carol-{proxy.name}", "password")
    reply = get(proxy, "/mfa/report", headers=API, cookie=cookie)
    assert reply.status == 401, reply
    scheme, params = challenge_params(reply.header("WWW-Authenticate"))
    description = params.pop("error_description")
    assert (scheme, params) == ("Bearer", {"realm": "forwardauth", "error": "insufficient_user_authentication",
                                           "acr_values": MFA_ACR}), reply
    assert "mfa" in description, reply
    assert reply.header("X-Forwardauth-Required-Level") == "mfa", reply
    body = reply.json()
    assert (body["error"], body["required_level"]) == ("insufficient_user_authentication", "mfa"), reply


def test_step_up_challenge_carries_max_age(proxy, forwardauth):
    cookie = forwardauth.issue(f"carol-{proxy.name}", "password")
    reply = get(proxy, "/fresh/report", headers=API, cookie=cookie)
    assert reply.status == 401, reply
    scheme, params = challenge_params(reply.header("WWW-Authenticate"))
    params.pop("error_description")
    assert (scheme, params) == ("Bearer", {"realm": "forwardauth", "error": "insufficient_user_authentication",
                                           "acr_values": MFA_ACR, "max_age": "900"}), reply


def test_password_session_on_mfa_route_redirects_a_browser(proxy, forwardauth):
    cookie = forwardauth.issue(f"carol-{proxy.name}", "password")
    reply = get(proxy, "/mfa/report?q=1", headers=BROWSER, cookie=cookie)
    assert_sign_in_redirect(reply, forwardauth, original(proxy, "/mfa/report?q=1"))


def test_mfa_session_reaches_mfa_route(proxy, forwardauth):
    cookie = forwardauth.issue(f"dave-{proxy.name}", "mfa")
    reply = get(proxy, "/mfa/report", headers=API, cookie=cookie)
    assert reply.status == 200, reply
    seen = identity_seen(reply)
    assert (seen["x-auth-request-user"], seen["x-auth-request-level"]) == ([f"dave-{proxy.name}"], ["mfa"])


def test_groups_restricted_route(proxy, forwardauth):
    outsider = forwardauth.issue(f"erin-{proxy.name}", "password", groups=("dev",))
    reply = get(proxy, "/admin/panel", headers=API, cookie=outsider)
    assert reply.status == 403, reply
    admin = forwardauth.issue(f"frank-{proxy.name}", "password", groups=("dev", "admins"))
    reply = get(proxy, "/admin/panel", headers=API, cookie=admin)
    assert reply.status == 200, reply
    assert identity_seen(reply)["remote-groups"] == ["dev,admins"]


def test_deny_rule_refuses_everyone(proxy, forwardauth):
    cookie = forwardauth.issue(f"grace-{proxy.name}", "mfa", groups=("admins",))
    assert get(proxy, "/deny/x", headers=API, cookie=cookie).status == 403
    assert get(proxy, "/deny/x", headers=BROWSER).status == 403


def test_tampered_cookie_is_not_signed_in(proxy, forwardauth):
    cookie = forwardauth.issue(f"heidi-{proxy.name}", "password")
    flipped = cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
    reply = get(proxy, "/password/x", headers=API, cookie=flipped)
    assert reply.status == 401, reply
    assert reply.header("WWW-Authenticate") == 'Bearer realm="forwardauth"', reply


def test_revoked_user_is_refused_within_refresh_interval(proxy, forwardauth):
    user = f"mallory-{proxy.name}"
    cookie = forwardauth.issue(user, "password")
    assert get(proxy, "/password/x", headers=API, cookie=cookie).status == 200
    forwardauth.revoke(user)
    revoked_at = time.monotonic()
    deadline = revoked_at + 0.5 + 1.5  # revocation.refresh_interval + margin
    while True:
        reply = get(proxy, "/password/x", headers=API, cookie=cookie)
        if reply.status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply.status == 401, f"still allowed {time.monotonic() - revoked_at:.2f}s after revoke\n{reply}"
    assert reply.header("WWW-Authenticate") == 'Bearer realm="forwardauth"', reply


def test_refreshed_session_cookie_reaches_the_browser(proxy, forwardauth):
    """Past half the 4 s idle window, forwardauth re-seals the session; the proxy passes Set-Cookie on."""
    user = f"ivan-{proxy.name}"
    asked = time.monotonic()
    cookie = forwardauth.issue(user, "password")
    issued = time.monotonic()  # the session's "last seen" lies between asked and issued
    fresh = get(proxy, "/password/x", headers=API, cookie=cookie)
    assert fresh.status == 200, fresh
    if time.monotonic() - asked < 1.5:  # well inside the first half: nothing to refresh yet
        assert fresh.all("Set-Cookie") == [], fresh
    time.sleep(max(0.0, issued + 2.3 - time.monotonic()))
    reply = get(proxy, "/password/x", headers=API, cookie=cookie)
    assert reply.status == 200, reply
    cookies = reply.all("Set-Cookie")
    assert len(cookies) == 1, reply
    name_value, *attrs = [p.strip() for p in cookies[0].split(";")]
    name, _, value = name_value.partition("=")
    assert name == COOKIE and value and value != cookie, cookies
    assert {a.lower() for a in attrs} >= {"path=/", "httponly", "samesite=lax"}, cookies
    assert not any(a.lower() == "secure" for a in attrs), cookies  # session.secure: false in the test config
    renewed = get(proxy, "/password/x", headers=API, cookie=value)
    assert renewed.status == 200, renewed
    assert identity_seen(renewed)["x-auth-request-user"] == [user]
    assert "set-cookie" not in {k.lower() for k, _ in renewed.json()["headers"]}, "cookie leaked to the app"
    assert not any(k.lower() == "x-forwardauth-set-cookie" for k, _ in renewed.json()["headers"])


def test_readiness_and_health(forwardauth):
    """The endpoints the proxies' health checks and the harness rely on."""
    assert request(forwardauth.port, "/healthz", host="127.0.0.1").status == 200
    assert request(forwardauth.port, "/readyz", host="127.0.0.1").status == 200


def test_echo_app_reports_alias_headers(echo_app):
    """Control for the forgery tests: the echo app itself shows alias-named headers."""
    reply = request(echo_app.port, "/x", host="127.0.0.1", headers=FORGED)
    assert identity_seen(reply)["x-auth-request-user"] == ["admin", "admin", "admin"]
    assert len(identity_seen(reply)["x-auth-request-jwt"]) == 2
    assert json.loads(reply.body)["path"] == "/x"


def raw_request(port: int, data: bytes) -> bytes:
    """Bytes in, bytes out: for request lines and headers a client library would not send."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    return out


def test_host_the_proxy_does_not_serve_never_reaches_the_app(proxy):
    """The policy lets status.test through anonymously, but no proxy serves it: asking for it
    must not reach the app (nginx's example has a default_server that refuses other names)."""
    reply = raw_request(proxy.port, f"GET /password/x HTTP/1.1\r\nHost: {STATUS_HOST}\r\n"
                                    "Connection: close\r\n\r\n".encode())
    expected = {"nginx": b"",  # 444: connection closed, nothing sent
                "traefik": b"HTTP/1.1 404 Not Found\r\n", "caddy": b"HTTP/1.1 200 OK\r\n"}[proxy.name]
    assert reply.startswith(expected) and (expected or reply == b""), reply
    assert b'"headers"' not in reply  # not the echo app's answer


def test_absolute_url_is_judged_on_the_host_the_proxy_routes_on(proxy):
    """A request line naming app.test with "Host: status.test": the proxy routes it to the
    app, so forwardauth must judge app.test (sign-in needed), not the anonymous status.test."""
    reply = raw_request(proxy.port, f"GET http://{APP_HOST}:{proxy.port}/password/x HTTP/1.1\r\n"
                                    f"Host: {STATUS_HOST}\r\nAccept: application/json\r\n"
                                    "Connection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 401 "), reply
    assert b'"headers"' not in reply


def test_non_ascii_bytes_in_the_path_are_never_a_server_error(proxy):
    """Raw bytes past ASCII in the request target: a path that is not UTF-8 is refused with
    forwardauth's 400; a raw UTF-8 path is judged like its percent-encoded form."""
    host = f"{APP_HOST}:{proxy.port}".encode()
    bad = raw_request(proxy.port, b"GET /public/x\xff HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    # Traefik and Caddy pass forwardauth's 400 on; nginx gets a 403 saying 400
    # (auth_request would turn a 400 into a 500), which the snippet answers as 400.
    assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b'"headers"' not in bad, bad
    assert bad.endswith(b"\r\n\r\n400 Bad Request: path is not valid UTF-8 after percent-decoding\n"), bad
    good = raw_request(proxy.port, b"GET /password/caf\xc3\xa9 HTTP/1.1\r\nHost: " + host
                       + b"\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
    assert good.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), good
    assert good.split(b"\r\n\r\n", 1)[1].startswith(b'{"error": "unauthorized"'), good


def test_forwardauth_api_token_is_not_passed_to_the_app(proxy):
    """A forwardauth token is checked by forwardauth and then removed; the app's own
    Authorization (Basic, or a Bearer that is not a forwardauth token) passes unchanged."""
    for value in ("Bearer fa1_notarealtoken", "bearer  fa1_x", "BEARER fa1_y"):
        reply = get(proxy, "/public/x", headers={**API, "Authorization": value})
        assert reply.status == 200, reply
        assert "authorization" not in reply.app_headers(), (value, reply)
    for value in ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer app-own-token"):
        reply = get(proxy, "/public/x", headers={**API, "Authorization": value})
        assert reply.status == 200, reply
        assert reply.app_headers()["authorization"] == [value], reply
