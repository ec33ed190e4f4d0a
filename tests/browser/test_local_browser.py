"""Local accounts in a real browser: headless Chromium -> real nginx -> the echo app.

nginx runs the shipped snippets (nginx/forwardauth.conf, forwardauth-protect.conf)
in front of examples/echo_app.py and also proxies forwardauth's own pages under
/oauth2/ on the same host, so the session cookie is host-only. forwardauth is
the real `forwardauth serve` with a `local:` section; the accounts are made
with the real CLI (`forwardauth users add ... --password-stdin`).

The journeys: sign in with a password and reach a `password` route; open an
`mfa` route, get the page that explains why, enrol TOTP by reading the secret
from the page and computing the code with pyotp, come back to the page asked
for; later, the TOTP challenge (a replayed code is refused); a wrong password
three times bans and the page says so; sign-out ends the session.
Screenshots of each page go to test-artifacts/screenshots/.

(tests/harness/proxies.start_nginx serves only the app host, so the nginx
config with the extra /oauth2/ location is written here; the shipped snippets
are included from nginx/ as they are.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest

from harness.browser import chromium, screenshot
from harness.ci import missing_tool
from harness.client import request
from harness.forwardauth import COOKIE, ForwardAuth
from harness.procs import Proc, free_port, http_status
from harness.proxies import NGINX_SNIPPETS, MissingTool, require, start_echo_app

pytestmark = [pytest.mark.browser, pytest.mark.proxy]

APP = "app.local.test"
PASSWORD = "a-long-Passw0rd-for-alice"
BOB_PASSWORD = "bobs-own-password-123"

POLICY = {
    "default": "deny",
    "rules": [
        {"name": "public", "hosts": [APP], "paths": ["/public/"], "allow": "anonymous"},
        {"name": "mfa", "hosts": [APP], "paths": ["/mfa/"], "level": "mfa"},
        {"name": "app", "hosts": [APP], "level": "password"},
    ],
}


def nginx_conf(workdir: Path, port: int, fa_port: int, app_port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    upstream forwardauth {{ server 127.0.0.1:{fa_port}; keepalive 16; }}
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        server_name {APP};
        include {NGINX_SNIPPETS}/forwardauth.conf;
        # forwardauth's own pages on the app's host: no auth_request here.
        location /oauth2/ {{
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_pass http://forwardauth;
        }}
        location / {{
            include {NGINX_SNIPPETS}/forwardauth-protect.conf;
            proxy_set_header Host $http_host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
}}
"""


@dataclass
class Stack:
    port: int
    fa: ForwardAuth
    nginx: Proc
    audit: Path

    def url(self, path: str) -> str:
        return f"http://{APP}:{self.port}{path}"

    def audit_lines(self) -> list[dict]:
        return [json.loads(x) for x in self.audit.read_text().splitlines()] if self.audit.exists() else []


def add_user(fa: ForwardAuth, name: str, password: str, *groups: str) -> None:
    argv = [sys.executable, "-m", "forwardauth", "users", "add", name, "-c", str(fa.config), "--password-stdin"]
    if groups:
        argv += ["--groups", ",".join(groups)]
    proc = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{name}: created (human; groups: {', '.join(groups) or 'none'})\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        nginx_bin = require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    workdir = tmp_path_factory.mktemp("local-browser")
    echo = start_echo_app(workdir / "echo")
    port, fa_port = free_port(), free_port()
    audit = workdir / "audit.log"
    fa = ForwardAuth(workdir / "forwardauth", port=fa_port, policy=POLICY, extra={
        "server": {"public_url": f"http://{APP}:{port}", "allowed_redirect_domains": [APP]},
        "levels": [
            {"name": "password", "acr": ["urn:forwardauth:acr:password"]},
            {"name": "mfa", "acr": ["urn:forwardauth:acr:mfa"], "local_factor": "totp"},
        ],
        "local": {"enabled": True, "scrypt": {"log_n": 12}, "totp": {"issuer": "forwardauth test"},
                  "regulation": {"max_failures": 3, "window": "10m", "ban_time": "15m"}, "audit": str(audit)},
    })
    add_user(fa, "alice", PASSWORD, "staff")
    add_user(fa, "bob", BOB_PASSWORD)
    fa.start()
    (workdir / "nginx" / "tmp").mkdir(parents=True)
    conf = workdir / "nginx" / "nginx.conf"
    conf.write_text(nginx_conf(workdir / "nginx", port, fa_port, echo.port))
    nginx = Proc("nginx", [nginx_bin, "-p", str(workdir / "nginx"), "-c", str(conf), "-e",
                           str(workdir / "nginx" / "error.log"), "-g", "daemon off;"], workdir / "nginx" / "error.log")
    nginx.start()
    try:
        nginx.wait_until(lambda: http_status(port, "/public/ready", f"{APP}:{port}") == 200, what="serving")
        yield Stack(port, fa, nginx, audit)
    finally:
        nginx.stop()
        fa.stop()
        echo.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium(hosts=[APP]) as b:
        yield b


@pytest.fixture
def page(request, browser, stack):
    context = browser.new_context(viewport={"width": 900, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        screenshot(pg, f"failed-{request.node.name}")
        print(f"\n--- page was {pg.url}\n--- forwardauth log ---\n{stack.fa.proc.log(4000)}"
              f"\n--- nginx log ---\n{stack.nginx.log(2000)}")
    context.close()


def echo_of(page) -> dict:
    """The echo app's JSON answer shown in the page, as a dict of lower-case header -> value."""
    body = json.loads(page.inner_text("body"))
    return {"path": body["path"], **{k.lower(): v for k, v in body["headers"]}}


def submit(page) -> None:
    """Click the form's button and wait for the answer page (the old page has a #message too)."""
    with page.expect_navigation():
        page.click("button[type=submit]")


def wait_path(page, path: str) -> None:
    page.wait_for_url(lambda url: urlsplit(url).path == path)


def sign_in(page, stack: Stack, target: str, user: str, password: str) -> None:
    page.goto(stack.url(target))
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    page.fill("#username", user)
    page.fill("#password", password)
    submit(page)


def test_password_sign_in_reaches_a_password_route(stack, page):
    page.goto(stack.url("/docs/page?x=1"))
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    assert page.title() == "Sign in · forwardauth"
    assert page.get_attribute("#username", "autocomplete") == "username"
    assert page.get_attribute("#password", "type") == "password"
    assert page.inner_text("label[for=username]") == "Username"
    screenshot(page, "sign_in")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    submit(page)
    page.wait_for_url(stack.url("/docs/page?x=1"))
    seen = echo_of(page)
    assert (seen["path"], seen["x-auth-request-user"], seen["x-auth-request-level"],
            seen["x-auth-request-groups"]) == ("/docs/page", "alice", "password", "staff")
    cookie = {c["name"]: c for c in page.context.cookies()}[COOKIE]
    assert cookie["httpOnly"] is True and cookie["domain"] == APP
    line = [x for x in stack.audit_lines() if x["event"] == "signin_ok"][-1]
    assert (line["user"], line["host"], line["path"], line["level"]) == ("alice", APP, "/docs/page", "password")


def test_mfa_route_explains_enrols_and_comes_back(stack, page):
    sign_in(page, stack, "/docs/", "alice", PASSWORD)
    page.wait_for_url(stack.url("/docs/"))
    target = stack.url("/mfa/report?y=2")

    page.goto(target)
    assert urlsplit(page.url).path == "/oauth2/step_up"
    assert page.inner_text("h1") == "This page needs a stronger sign-in"
    assert "You have not set up an authenticator app yet." in page.inner_text("main")
    screenshot(page, "step_up")
    page.get_by_role("link", name="Set up an authenticator app").click()
    wait_path(page, "/oauth2/totp/enroll")
    assert page.inner_text("h1") == "Set up two-step sign-in"
    assert page.locator("figure.qr svg").count() == 1
    screenshot(page, "enroll")
    secret = page.inner_text("#secret").replace(" ", "")
    assert len(secret) == 32
    enrolled_step = int(time.time() // 30)
    page.fill("#code", pyotp.TOTP(secret).at(enrolled_step * 30))
    submit(page)
    page.wait_for_url(target)
    seen = echo_of(page)
    assert (seen["path"], seen["x-auth-request-user"], seen["x-auth-request-level"]) == ("/mfa/report", "alice",
                                                                                         "mfa")
    events = [x["event"] for x in stack.audit_lines() if x["user"] == "alice"][-2:]
    assert events == ["totp_enrolled", "step_up"]

    # Later, in a new browser session: password, then the TOTP challenge.
    page.context.clear_cookies()
    sign_in(page, stack, "/mfa/report?y=2", "alice", PASSWORD)
    wait_path(page, "/oauth2/totp")
    assert page.inner_text("h1") == "Two-step sign-in"
    screenshot(page, "totp")
    totp = pyotp.TOTP(secret)
    # the code just used for enrolment is refused; the next one (within the skew window) is accepted
    used = totp.at(enrolled_step * 30)
    page.fill("#code", used)
    submit(page)
    assert page.inner_text("#message") == ("That code has already been used. Wait for the next code "
                                           "(a new one appears every 30 seconds).")
    screenshot(page, "totp_replayed")
    page.fill("#code", totp.at((max(enrolled_step, int(time.time() // 30)) + 1) * 30))
    submit(page)
    page.wait_for_url(target)
    assert echo_of(page)["x-auth-request-level"] == "mfa"


def test_wrong_password_bans_and_the_page_says_so(stack, page):
    page.goto(stack.url("/docs/"))
    for i in range(3):
        page.fill("#username", "bob")
        page.fill("#password", f"wrong-{i}")
        submit(page)
        expected = "Wrong username or password." if i < 2 else "Too many failed attempts. Try again in 15 minutes."
        assert page.inner_text("#message") == expected
    screenshot(page, "banned")
    page.fill("#password", BOB_PASSWORD)  # the right one does not help now
    submit(page)
    assert page.inner_text("#message") == "Too many failed attempts. Try again in 15 minutes."
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    bob = [(x["event"], x["reason"]) for x in stack.audit_lines() if x["user"] == "bob"][-4:]
    assert bob == [("signin_failed", "wrong_password"), ("signin_failed", "wrong_password"),
                   ("signin_failed", "wrong_password; ban started"), ("signin_refused", "banned")]


def test_sign_out(stack, page):
    sign_in(page, stack, "/docs/a", "alice", PASSWORD)
    page.wait_for_url(stack.url("/docs/a"))
    old = {c["name"]: c for c in page.context.cookies()}[COOKIE]["value"]
    page.goto(stack.url("/oauth2/sign_out"))
    # signed out: back at the sign-in page (public_url/ is the app's root, which needs a sign-in)
    wait_path(page, "/oauth2/sign_in")
    assert COOKIE not in {c["name"] for c in page.context.cookies()}
    assert [x["event"] for x in stack.audit_lines() if x["user"] == "alice"][-1] == "signout"
    page.goto(stack.url("/docs/a"))
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    # the old cookie value is dead too (revoked, not just deleted from this browser)
    time.sleep(1.2)  # revocation refresh_interval is 0.5 s
    reply = request(stack.port, "/docs/a", host=f"{APP}:{stack.port}",
                    headers={"Cookie": f"{COOKIE}={old}", "Accept": "application/json"})
    assert reply.status == 401, reply
