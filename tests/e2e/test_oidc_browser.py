"""Upstream OpenID Connect sign-in and step-up in a real browser (issue 3).

Headless Chromium -> nginx / Traefik / Caddy (the shipped configs) -> the echo
app, with forwardauth asking panva's oidc-provider. The browser fills the
provider's login form itself (#login, #acr, #submit) every time; no step
is short-cut. One journey per proxy:

1. anonymous -> protected page -> provider (password) -> back on the page,
   with the identity headers the app receives checked one by one;
2. an `mfa` route -> step-up (prompt=login, acr_values mfa) -> back on it;
3. a route with max_age 3s: passes while the proof is fresh, sends the user
   to the provider again once it is older;
4. sign-out ends the session here and at the provider: the old cookie is
   refused, and the next protected page shows the provider's login form.

The time of the first full sign-in (page -> start -> provider -> callback ->
page, form filling included) is printed and written to
test-artifacts/timings.txt.
"""

from __future__ import annotations

import re
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from harness.ci import missing_tool
from harness.client import request
from harness.forwardauth import COOKIE, ForwardAuth
from harness.oidc import ACR_MFA, ACR_PASSWORD, OidcProvider
from harness.procs import free_port
from harness.proxies import PROXIES, MissingTool, Running, require, start_proxy

pytestmark = [pytest.mark.browser, pytest.mark.oidc, pytest.mark.proxy]

# Host names (*.test resolve to 127.0.0.1 in the browser; see harness.browser):
#   app.fa.test   the app, through the proxy under test
#   auth.fa.test  forwardauth's public_url, straight on forwardauth's port
# The session cookie is set for Domain=fa.test so both see it (Chromium refuses
# a Domain that is a bare TLD such as `test`). The provider is on 127.0.0.1.
DOMAIN = "fa.test"
APP = f"app.{DOMAIN}"
AUTH = f"auth.{DOMAIN}"
SIGNED_OUT_PATH = "/public/signed-out"
MAX_AGE = 3  # seconds, the /fresh/ route's max_age

POLICY = {
    "default": "deny",
    "rules": [
        {"name": "public", "hosts": [APP], "paths": ["/public/"], "allow": "anonymous"},
        {"name": "mfa", "hosts": [APP], "paths": ["/mfa/"], "level": "mfa"},
        {"name": "fresh", "hosts": [APP], "paths": ["/fresh/"], "level": "password", "max_age": f"{MAX_AGE}s"},
        {"name": "app", "hosts": [APP], "level": "password"},
    ],
}


@dataclass
class Stack:
    """One proxy with forwardauth (OIDC configured) and the provider behind it."""

    proxy: Running
    fa: ForwardAuth
    op: OidcProvider

    def app_url(self, path: str) -> str:
        return f"http://{APP}:{self.proxy.port}{path}"

    @property
    def signed_out_url(self) -> str:
        return self.app_url(SIGNED_OUT_PATH)


def _stack(name, workdir, echo_app, session: dict | None = None):
    """A context manager: the proxy `name`, forwardauth and the provider, stopped at the end."""
    try:
        require(name)
    except MissingTool as exc:
        missing_tool(str(exc))
    op_port, fa_port = free_port(), free_port()
    secret = secrets.token_urlsafe(24)
    stop = ExitStack()
    with stop:
        fa = ForwardAuth(workdir / "forwardauth", port=fa_port, policy=POLICY, extra={
            "server": {"public_url": f"http://{AUTH}:{fa_port}"},
            "session": {"domain": DOMAIN, **(session or {})},
            "oidc": {"issuer": f"http://127.0.0.1:{op_port}", "client_id": "forwardauth",
                     "client_secret": secret},
        })
        fa.start()
        stop.callback(fa.stop)
        proxy = start_proxy(name, workdir / name, fa.port, echo_app.port, APP, COOKIE)
        stop.callback(proxy.stop)
        op = OidcProvider([f"{fa.public_url}/oauth2/callback"], port=op_port, client_secret=secret,
                          post_logout_redirect_uris=[f"{fa.public_url}/oauth2/signed_out"],
                          log_dir=workdir / "provider")
        op.start()
        stop.callback(op.stop)
        return stop.pop_all(), Stack(proxy, fa, op)


@pytest.fixture(scope="module", params=PROXIES)
def stack(request, tmp_path_factory, echo_app):
    stop, st = _stack(request.param, tmp_path_factory.mktemp(f"e2e-{request.param}"), echo_app)
    with stop:
        yield st


@pytest.fixture(scope="module")
def strict_stack(tmp_path_factory, echo_app):
    """nginx, with `session.same_site: strict`."""
    stop, st = _stack("nginx", tmp_path_factory.mktemp("e2e-strict"), echo_app, {"same_site": "strict"})
    with stop:
        yield st


USER = "alice"
EMAIL = "alice@example.test"
NAME = "Alice Liddell"
GROUPS = "dev,ops"
IDENTITY = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-groups", "x-auth-request-level",
            "x-auth-request-name", "x-auth-request-auth-time", "remote-user", "remote-email", "remote-groups",
            "remote-name")
SIGN_IN = ["app", "start", "provider", "callback", "app"]


class Trail:
    """Every main-frame navigation request of a page, redirect hops included, in order."""

    def __init__(self, page, stack: Stack):
        self.page, self.stack = page, stack
        self.hops: list[tuple[str, str]] = []
        page.on("request", self._seen)

    def _seen(self, req) -> None:
        if req.is_navigation_request() and req.frame == self.page.main_frame:
            self.hops.append((req.method, req.url))

    def mark(self) -> int:
        return len(self.hops)

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.hops[mark:]

    def leg(self, url: str) -> str:
        s = self.stack
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin == f"http://{APP}:{s.proxy.port}":
            return "app"
        if origin == s.op.issuer:
            return "provider"
        if origin == s.fa.public_url:
            return {"/oauth2/start": "start", "/oauth2/callback": "callback",
                    "/oauth2/sign_out": "sign_out", "/oauth2/signed_out": "signed_out"}.get(parts.path, parts.path)
        return url

    def legs(self, mark: int) -> list[str]:
        """Where the browser went since `mark`, consecutive provider pages as one leg."""
        out: list[str] = []
        for _, url in self.since(mark):
            leg = self.leg(url)
            if not (leg == "provider" and out and out[-1] == "provider"):
                out.append(leg)
        return out


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def land(page, url: str, action):
    """Run `action` (a goto or a click) and return the final (non-redirect) response for `url`."""
    with page.expect_response(lambda r: r.url == url and r.request.is_navigation_request()
                              and not 300 <= r.status < 400, timeout=30_000) as info:
        action()
    page.wait_for_url(url)
    return info.value


def at_login_form(page, stack: Stack) -> str:
    """Wait for the provider's login form; return its interaction uid."""
    pattern = re.compile(re.escape(stack.op.issuer) + r"/interaction/([A-Za-z0-9_-]+)$")
    page.wait_for_url(pattern)
    page.wait_for_selector("#login-form")
    return pattern.match(page.url).group(1)


def fill_login(page, sub: str, acr: str, *, email: str = "", name: str = "", groups: str = "") -> None:
    page.fill("#login", sub)
    page.select_option("#acr", acr)
    page.fill("#email", email)
    page.fill("#name", name)
    page.fill("#groups", groups)


def identity(resp) -> dict[str, list[str]]:
    """The identity headers the echo app received (lower-case name -> values)."""
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        if name.lower() in IDENTITY:
            out.setdefault(name.lower(), []).append(value)
    return out


def expected_identity(level: str) -> dict[str, list[str]]:
    return {
        "x-auth-request-user": [USER], "x-auth-request-email": [EMAIL], "x-auth-request-groups": [GROUPS],
        "x-auth-request-level": [level], "x-auth-request-name": [NAME], "remote-user": [USER],
        "remote-email": [EMAIL], "remote-groups": [GROUPS], "remote-name": [NAME],
    }


def assert_identity(resp, level: str, proven_after: float) -> None:
    seen = identity(resp)
    auth_time = seen.pop("x-auth-request-auth-time", None)
    assert seen == expected_identity(level), seen
    # auth_time is the latest proof: the provider's auth_time for a first sign-in
    # (nothing forced it), the callback's time after a forced re-authentication.
    assert auth_time is not None and len(auth_time) == 1, auth_time
    assert int(proven_after) <= int(auth_time[0]) <= time.time() + 1, (auth_time, proven_after)


def session_cookies(context) -> dict[str, dict]:
    return {c["name"]: c for c in context.cookies()}


def assert_echo(resp, path: str, query_string: str = "") -> None:
    assert resp.status == 200, (resp.status, resp.url)
    body = resp.json()
    assert (body["method"], body["path"], body["query"]) == ("GET", path, query_string), body


def test_sign_in_step_up_max_age_and_sign_out(stack: Stack, page, timings):
    op, fa = stack.op, stack.fa
    trail = Trail(page, stack)
    authorize_endpoint = op.discovery["authorization_endpoint"]
    callback = f"{fa.public_url}/oauth2/callback"
    op.clear_interactions()

    # 1. Anonymous -> protected page -> provider, signs in at password -> the page.
    target = stack.app_url("/docs/page?x=1")
    mark = trail.mark()
    t0 = time.perf_counter()
    page.goto(target)
    uid = at_login_form(page, stack)
    t_form = time.perf_counter()
    hops = trail.since(mark)
    assert hops[:2] == [("GET", target), ("GET", f"{fa.public_url}/oauth2/start?rd={quote(target, safe='')}")]
    assert hops[2][1].startswith(authorize_endpoint + "?"), hops
    asked = query(hops[2][1])
    assert (asked["client_id"], asked["redirect_uri"], asked["response_type"], asked["code_challenge_method"]) \
        == ("forwardauth", callback, "code", "S256"), asked
    # password or anything above it; no prompt, max_age or login_hint for an anonymous user
    assert set(asked) == {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
                          "code_challenge_method", "acr_values", "claims"}, asked
    assert (asked["acr_values"], asked["scope"]) == (f"{ACR_PASSWORD} {ACR_MFA}", "openid email profile"), asked
    assert page.input_value("#login") == ""
    fill_login(page, USER, ACR_PASSWORD, email=EMAIL, name=NAME, groups=GROUPS)
    t_fill = time.perf_counter()
    proven_after = time.time()
    resp = land(page, target, lambda: page.click("#submit"))
    t1 = time.perf_counter()
    assert trail.legs(mark) == SIGN_IN, trail.since(mark)
    assert page.url == target
    assert_echo(resp, "/docs/page", "x=1")
    assert_identity(resp, "password", proven_after)
    interactions = op.interactions()
    assert [(i["uid"], i["prompt"]["name"], i["auto"]) for i in interactions] == [(uid, "login", False)]
    cookies = session_cookies(page.context)
    assert set(cookies) == {COOKIE} | {n for n in cookies if n.startswith("_")}, cookies  # the provider's
    assert (cookies[COOKIE]["domain"], cookies[COOKIE]["path"], cookies[COOKIE]["httpOnly"],
            cookies[COOKIE]["sameSite"]) == (f".{DOMAIN}", "/", True, "Lax"), cookies[COOKIE]
    assert not [n for n in cookies if "_login_" in n], cookies  # the per-login cookie is cleared
    first_cookie = cookies[COOKIE]["value"]
    line = (f"oidc browser sign-in via {stack.proxy.name}: {t1 - t0:.2f} s from the protected page "
            f"to the page again (to the provider's form {t_form - t0:.2f} s, form filled in {t_fill - t_form:.2f} s, "
            f"submit -> callback -> page {t1 - t_fill:.2f} s; {len(trail.since(mark))} navigations)")
    print(f"\n{line}")
    timings.append(line)

    # 2. An mfa route: step-up at the provider (prompt=login, acr_values mfa) -> the page asked for.
    target = stack.app_url("/mfa/settings")
    mark = trail.mark()
    page.goto(target)
    uid = at_login_form(page, stack)
    asked = query(trail.since(mark)[2][1])
    assert (asked["prompt"], asked["login_hint"]) == ("login", USER), asked
    assert asked["acr_values"] == ACR_MFA, asked
    assert "max_age" not in asked, asked
    assert page.input_value("#login") == USER  # login_hint reached the provider
    fill_login(page, USER, ACR_MFA)
    proven_after = time.time()
    resp = land(page, target, lambda: page.click("#submit"))
    assert trail.legs(mark) == SIGN_IN, trail.since(mark)
    assert_echo(resp, "/mfa/settings")
    assert_identity(resp, "mfa", proven_after)
    interactions = op.interactions()
    assert len(interactions) == 2 and interactions[-1]["uid"] == uid, interactions
    assert (interactions[-1]["params"]["prompt"], interactions[-1]["params"]["acr_values"].split()[0]) \
        == ("login", ACR_MFA), interactions[-1]

    # 3. max_age 3s: a fresh proof passes straight through ...
    target = stack.app_url("/fresh/report")
    mark = trail.mark()
    resp = land(page, target, lambda: page.goto(target))
    assert time.time() - proven_after < MAX_AGE, "too slow to check the fresh case"
    assert trail.legs(mark) == ["app"], trail.since(mark)
    assert_echo(resp, "/fresh/report")
    assert_identity(resp, "mfa", proven_after)
    assert len(op.interactions()) == 2
    # ... and once the proof is older than max_age the provider is asked again.
    time.sleep(max(0.0, proven_after + MAX_AGE + 0.5 - time.time()))
    mark = trail.mark()
    page.goto(target)
    uid = at_login_form(page, stack)
    asked = query(trail.since(mark)[2][1])
    assert (asked["max_age"], asked["prompt"], asked["login_hint"]) == (str(MAX_AGE), "login", USER), asked
    assert asked["acr_values"] == f"{ACR_PASSWORD} {ACR_MFA}", asked
    fill_login(page, USER, ACR_PASSWORD)
    proven_after = time.time()
    resp = land(page, target, lambda: page.click("#submit"))
    assert trail.legs(mark) == SIGN_IN, trail.since(mark)
    assert_echo(resp, "/fresh/report")
    assert_identity(resp, "mfa", proven_after)  # still mfa: the mfa proof is kept, password is renewed
    interactions = op.interactions()
    assert len(interactions) == 3 and interactions[-1]["uid"] == uid, interactions
    assert str(interactions[-1]["params"]["max_age"]) == str(MAX_AGE), interactions[-1]
    # The mfa route has no max_age: the older mfa proof still opens it.
    target = stack.app_url("/mfa/settings")
    mark = trail.mark()
    resp = land(page, target, lambda: page.goto(target))
    assert trail.legs(mark) == ["app"], trail.since(mark)
    assert identity(resp)["x-auth-request-level"] == ["mfa"]

    # 4. Sign-out: the cookie is cleared and revoked, the provider's session ends too.
    cookie = session_cookies(page.context)[COOKIE]["value"]
    assert cookie != first_cookie  # re-sealed at each sign-in
    api = {"Accept": "application/json", "Cookie": f"{COOKIE}={cookie}"}
    before = request(stack.proxy.port, "/docs/page", host=f"{APP}:{stack.proxy.port}", headers=api)
    assert before.status == 200, before
    signed_out = stack.signed_out_url
    mark = trail.mark()
    resp = land(page, signed_out, lambda: page.goto(f"{fa.public_url}/oauth2/sign_out?rd={quote(signed_out)}"))
    assert trail.legs(mark) == ["sign_out", "provider", "signed_out", "app"], trail.since(mark)
    end_session = trail.since(mark)[1][1]
    assert end_session.startswith(op.discovery["end_session_endpoint"] + "?"), end_session
    params = query(end_session)
    assert params.pop("state")
    assert params == {"client_id": "forwardauth", "post_logout_redirect_uri": f"{fa.public_url}/oauth2/signed_out"}
    assert_echo(resp, "/public/signed-out")
    assert identity(resp) == {}
    assert COOKIE not in session_cookies(page.context)
    after = request(stack.proxy.port, "/docs/page", host=f"{APP}:{stack.proxy.port}", headers=api)
    assert after.status == 401, after  # the copied cookie is revoked, not just deleted
    # The next protected page goes back to sign-in, and the provider asks again
    # (its own session ended too; else it would answer without a form).
    target = stack.app_url("/docs/page?x=1")
    mark = trail.mark()
    page.goto(target)
    uid = at_login_form(page, stack)
    assert trail.legs(mark) == ["app", "start", "provider"], trail.since(mark)
    asked = query(trail.since(mark)[2][1])
    assert "prompt" not in asked and "login_hint" not in asked, asked
    assert page.input_value("#login") == ""
    interactions = op.interactions()
    assert len(interactions) == 4 and interactions[-1]["uid"] == uid, interactions


def test_sign_in_with_a_strict_session_cookie(strict_stack: Stack, page):
    """session.same_site: strict. The provider sends the browser back with a cross-site navigation:
    the per-login cookie (always SameSite=Lax) must come along, and the new session must reach the app."""
    stack = strict_stack
    trail = Trail(page, stack)
    target = stack.app_url("/docs/strict")
    mark = trail.mark()
    page.goto(target)
    at_login_form(page, stack)
    login = [c for c in page.context.cookies() if "_login_" in c["name"]]
    assert [(c["path"], c["sameSite"], c["httpOnly"]) for c in login] == [("/oauth2/", "Lax", True)], login
    fill_login(page, USER, ACR_PASSWORD, email=EMAIL, name=NAME, groups=GROUPS)
    proven_after = time.time()
    resp = land(page, target, lambda: page.click("#submit"))
    assert_echo(resp, "/docs/strict")
    assert_identity(resp, "password", proven_after)
    # The callback answers with a page that moves on by itself: a redirect chain that began
    # at the provider would not carry the Strict cookie, and the app would start over (a loop).
    assert trail.legs(mark) == SIGN_IN, trail.since(mark)
    cookies = session_cookies(page.context)
    assert cookies[COOKIE]["sameSite"] == "Strict", cookies[COOKIE]
    assert not [n for n in cookies if "_login_" in n], cookies
