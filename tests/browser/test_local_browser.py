"""The README's "Run it", in a real browser: headless Chromium -> real nginx -> the echo app.

Everything here is what the repository ships, with only the ports (and
paths) templated so the test can run beside anything else:

- forwardauth runs the embedded default, forwardauth/default.yaml (its
  `{var}` directory and port 4180 replaced), with `forwardauth serve -c`;
  its audit log is stdout, read back from the process's output;
- nginx runs examples/local/nginx.conf (ports 8080/4180/8081 replaced, the
  includes of the shipped nginx/forwardauth.conf and forwardauth-protect.conf
  made absolute), in front of examples/echo_app.py, all on 127.0.0.1;
- the first administrator is the one the default creates on first start,
  signed in with the password it prints once; other accounts are made with
  the real CLI (`forwardauth users add ... --password-stdin`).

The journeys: the first admin opens /admin/ (mfa), signs in with the printed
password, gets the page that explains why a second factor is needed, sets up
TOTP by reading the secret from the page and computing the code with pyotp,
and lands on the page asked for; later, in a new browser session, the TOTP
challenge (a replayed code is refused). A user reaches a `password` route; a
wrong password five times (the default's max_failures) bans and the page says
so; sign-out ends the session. Screenshots of each page go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest

from harness.browser import screenshot
from harness.ci import missing_tool
from harness.client import request
from harness.forwardauth import COOKIE, cli
from harness.procs import Proc, free_port, http_status
from harness.proxies import NGINX_SNIPPETS, MissingTool, require, start_echo_app

pytestmark = [pytest.mark.browser, pytest.mark.proxy]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_YAML = REPO / "forwardauth" / "default.yaml"
LOCAL_NGINX = REPO / "examples" / "local" / "nginx.conf"
HOST = "127.0.0.1"
PASSWORD = "a-long-Passw0rd-for-alice"
BOB_PASSWORD = "bobs-own-password-123"
BANNED = "Too many failed attempts. Try again in 15 minutes."


def default_config(workdir: Path, fa_port: int) -> Path:
    """forwardauth/default.yaml as shipped, with its data directory and port templated."""
    text = DEFAULT_YAML.read_text()
    assert text.count("127.0.0.1:4180") == 2, "default.yaml: listen and public_url on 127.0.0.1:4180"
    text = text.replace("{var}", str(workdir / "var")).replace("127.0.0.1:4180", f"{HOST}:{fa_port}")
    (workdir / "var").mkdir(parents=True)
    cli("keys", "generate", "-o", str(workdir / "var" / "keys.json"))
    path = workdir / "forwardauth.yaml"
    path.write_text(text)
    return path


def local_nginx_conf(port: int, fa_port: int, app_port: int) -> str:
    """examples/local/nginx.conf as shipped, with its ports and the snippets' directory templated."""
    text = LOCAL_NGINX.read_text()
    for old, new in ((f"{HOST}:8080", f"{HOST}:{port}"), (f"{HOST}:4180", f"{HOST}:{fa_port}"),
                     (f"{HOST}:8081", f"{HOST}:{app_port}"), ("../../nginx/", f"{NGINX_SNIPPETS}/")):
        assert old in text, old
        text = text.replace(old, new)
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private tmp dirs.
    return ("user root;\n" if os.geteuid() == 0 else "") + text


@dataclass
class Stack:
    port: int
    fa_port: int
    fa: Proc
    nginx: Proc
    config: Path
    admin_password: str

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def fa_url(self, path: str) -> str:
        return f"http://{HOST}:{self.fa_port}{path}"

    def audit_lines(self) -> list[dict]:
        """The audit lines forwardauth wrote on stdout (the default's `audit: stdout`)."""
        out = []
        for line in self.fa.log_path.read_text(errors="replace").splitlines():
            if line.startswith('{"time":') and '"event":' in line:
                out.append(json.loads(line))
        return out


def add_user(config: Path, name: str, password: str, *groups: str) -> None:
    argv = [sys.executable, "-m", "forwardauth", "users", "add", name, "-c", str(config), "--password-stdin"]
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
    config = default_config(workdir, fa_port)
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", config], workdir / "forwardauth.log")
    fa.start()
    nginx = None
    try:
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready on /readyz", timeout=60)
        # the first administrator, printed once on stderr, as a person starting it would see it
        m = re.search(r"username: admin\n    password: (\S+)\n", fa.log())
        assert m, fa.log()
        add_user(config, "alice", PASSWORD, "staff")
        add_user(config, "bob", BOB_PASSWORD)
        (workdir / "nginx").mkdir()
        conf = workdir / "nginx" / "nginx.conf"
        conf.write_text(local_nginx_conf(port, fa_port, echo.port))
        nginx = Proc("nginx", [nginx_bin, "-p", str(workdir / "nginx"), "-c", str(conf), "-e", "stderr"],
                     workdir / "nginx" / "nginx.log")
        nginx.start()
        nginx.wait_until(lambda: http_status(port, "/public/ready", f"{HOST}:{port}") == 200, what="serving")
        yield Stack(port, fa_port, fa, nginx, config, m.group(1))
    finally:
        if nginx is not None:
            nginx.stop()
        fa.stop()
        echo.stop()


@pytest.fixture(scope="module")
def browser():
    from harness.browser import chromium

    with chromium(hosts=()) as b:
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
        print(f"\n--- page was {pg.url}\n--- forwardauth log ---\n{stack.fa.log(4000)}"
              f"\n--- nginx log ---\n{stack.nginx.log(2000)}")
    context.close()


def echo_of(page) -> dict:
    """The echo app's JSON answer shown in the page, as a dict of lower-case header -> value."""
    body = json.loads(page.inner_text("body"))
    return {"path": body["path"], **{k.lower(): v for k, v in body["headers"]}}


def submit(page) -> None:
    """Click the form's button and wait for the answer page."""
    with page.expect_navigation():
        page.click("button[type=submit]")


def wait_path(page, path: str) -> None:
    page.wait_for_url(lambda url: urlsplit(url).path == path)


def error_text(page) -> str:
    return page.inner_text("#error")


def sign_in(page, stack: Stack, target: str, user: str, password: str) -> None:
    page.goto(stack.url(target))
    assert page.url.startswith(stack.fa_url("/oauth2/sign_in")), page.url
    page.fill("#username", user)
    page.fill("#password", password)
    submit(page)


def test_first_admin_signs_in_with_the_printed_password_and_sets_up_totp(stack, page):
    target = stack.url("/admin/report?y=2")
    page.goto(target)
    # nginx's 401 -> forwardauth's /oauth2/start -> the sign-in page, at forwardauth's own address
    assert urlsplit(page.url)[:3] == ("http", f"{HOST}:{stack.fa_port}", "/oauth2/sign_in")
    assert page.title() == "Sign in · forwardauth"
    assert page.get_attribute("#username", "autocomplete") == "username"
    assert page.get_attribute("#password", "type") == "password"
    assert page.inner_text("label[for=username]") == "Username"
    screenshot(page, "sign_in")
    page.fill("#username", "admin")
    page.fill("#password", stack.admin_password)
    submit(page)

    # /admin/ needs mfa: the page that says why, then the set-up
    wait_path(page, "/oauth2/step_up")
    assert page.inner_text("h1") == "This page needs a stronger sign-in"
    main = page.inner_text("main")
    assert f"{HOST}/admin/report needs two-step sign-in." in main
    assert "You have not set up an authenticator app yet." in main
    assert "You are signed in as admin with a password (level password)." in main
    screenshot(page, "step_up")
    page.get_by_role("link", name="Set up an authenticator app").click()
    wait_path(page, "/oauth2/totp/enroll")
    assert page.inner_text("h1") == "Set up two-step sign-in"
    assert page.locator("figure.qr svg").count() == 1
    screenshot(page, "enroll")
    secret = page.inner_text("#secret").replace(" ", "")
    assert len(secret) == 32
    # a wrong first code: said next to the field, the same secret stays
    page.fill("#code", "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    submit(page)
    assert error_text(page) == ("That code is not right. Check that your phone's clock is correct and try the "
                                "next code.")
    assert page.get_attribute("#code", "aria-invalid") == "true"
    assert page.get_attribute("#code", "aria-describedby") == "error"
    assert page.inner_text("#secret").replace(" ", "") == secret
    enrolled_step = int(time.time() // 30)
    page.fill("#code", pyotp.TOTP(secret).at(enrolled_step * 30))
    submit(page)
    page.wait_for_url(target)
    seen = echo_of(page)
    assert (seen["path"], seen["x-auth-request-user"], seen["x-auth-request-level"],
            seen["x-auth-request-groups"]) == ("/admin/report", "admin", "mfa", "admins")
    cookie = {c["name"]: c for c in page.context.cookies()}[COOKIE]
    assert cookie["httpOnly"] is True and cookie["domain"] == HOST
    lines = [x for x in stack.audit_lines() if x["user"] == "admin"]
    assert [x["event"] for x in lines][-4:] == ["signin_ok", "totp_failed", "totp_enrolled", "step_up"]
    assert (lines[-1]["host"], lines[-1]["path"], lines[-1]["level"]) == (HOST, "/admin/report", "mfa")
    text = stack.fa.log_path.read_text()
    assert stack.admin_password not in text.replace(f"password: {stack.admin_password}\n", "")
    assert secret not in text

    # Later, in a new browser session: password, then the TOTP challenge.
    page.context.clear_cookies()
    sign_in(page, stack, "/admin/report?y=2", "admin", stack.admin_password)
    wait_path(page, "/oauth2/totp")
    assert page.inner_text("h1") == "Two-step sign-in"
    screenshot(page, "totp")
    totp = pyotp.TOTP(secret)
    # the code just used for enrolment is refused; the next one (within the skew window) is accepted
    page.fill("#code", totp.at(enrolled_step * 30))
    submit(page)
    assert error_text(page) == ("That code has already been used. Wait for the next code "
                                "(a new one appears every 30 seconds).")
    screenshot(page, "totp_replayed")
    page.fill("#code", totp.at((max(enrolled_step, int(time.time() // 30)) + 1) * 30))
    submit(page)
    page.wait_for_url(target)
    assert echo_of(page)["x-auth-request-level"] == "mfa"


def test_password_sign_in_reaches_a_password_route(stack, page):
    sign_in(page, stack, "/docs/page?x=1", "alice", PASSWORD)
    page.wait_for_url(stack.url("/docs/page?x=1"))
    seen = echo_of(page)
    assert (seen["path"], seen["x-auth-request-user"], seen["x-auth-request-level"],
            seen["x-auth-request-groups"]) == ("/docs/page", "alice", "password", "staff")
    line = [x for x in stack.audit_lines() if x["event"] == "signin_ok"][-1]
    assert (line["user"], line["host"], line["path"], line["level"]) == ("alice", HOST, "/docs/page", "password")
    # /public/ needs nobody
    page.context.clear_cookies()
    page.goto(stack.url("/public/x"))
    assert echo_of(page)["path"] == "/public/x" and "x-auth-request-user" not in echo_of(page)


def test_wrong_password_bans_and_the_page_says_so(stack, page):
    page.goto(stack.url("/docs/"))
    for i in range(5):  # the default's regulation.max_failures
        page.fill("#username", "bob")
        page.fill("#password", f"wrong-{i}")
        submit(page)
        assert error_text(page) == ("Wrong username or password." if i < 4 else BANNED)
        assert page.get_attribute("#password", "aria-invalid") == "true"
    screenshot(page, "banned")
    page.fill("#password", BOB_PASSWORD)  # the right one does not help now
    submit(page)
    assert error_text(page) == BANNED
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    bob = [(x["event"], x["reason"]) for x in stack.audit_lines() if x["user"] == "bob"][-3:]
    assert bob == [("signin_failed", "wrong_password"), ("signin_failed", "wrong_password; ban started"),
                   ("signin_refused", "banned")]


def test_sign_out(stack, page):
    sign_in(page, stack, "/docs/a", "alice", PASSWORD)
    page.wait_for_url(stack.url("/docs/a"))
    old = {c["name"]: c for c in page.context.cookies()}[COOKIE]["value"]
    page.goto(stack.fa_url("/oauth2/sign_out"))
    # signed out: forwardauth's home page needs a sign-in, so the sign-in page
    wait_path(page, "/oauth2/sign_in")
    assert COOKIE not in {c["name"] for c in page.context.cookies()}
    assert [x["event"] for x in stack.audit_lines() if x["user"] == "alice"][-1] == "signout"
    page.goto(stack.url("/docs/a"))
    assert urlsplit(page.url).path == "/oauth2/sign_in"
    # the old cookie value is dead too (revoked, not just deleted from this browser)
    time.sleep(2.5)  # the default's revocation refresh_interval is 2 s
    reply = request(stack.port, "/docs/a", host=f"{HOST}:{stack.port}",
                    headers={"Cookie": f"{COOKIE}={old}", "Accept": "application/json"})
    assert reply.status == 401, reply
