"""Passkeys and security keys end to end: headless Chromium with CDP virtual
authenticators -> real nginx (the shipped snippets) -> the echo app, with a real
`forwardauth serve` (local accounts made with the real CLI, SQLite state).

Host names are *.localhost: Chromium resolves them to loopback itself and
treats them as secure contexts, so WebAuthn works over plain http there (an
IP address can never be an RP ID, and http://*.test is not a secure context).
forwardauth's pages are at http://auth.fa.localhost:PORT (RP ID fa.localhost),
the app behind nginx at http://app.fa.localhost:PORT; the session cookie
(__Secure-fa, Domain=fa.localhost) goes to both.

Journeys: a passkey (ctap2, internal, resident key, user verification) is
added from a password session on a `hardware` route, then used to step up;
after signing out, the passkey alone signs in and reaches `hardware`; the
`hardware` route's max_age asks for the key again; a security key without
user verification (usb) reaches `mfa` but not `hardware`; a removed passkey
no longer signs in. Screenshots of every page in test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from harness.browser import screenshot
from harness.ci import missing_tool
from harness.forwardauth import cli
from harness.procs import Proc, free_port, http_status
from harness.proxies import MissingTool, Running, start_echo_app, start_proxy
from harness.webauthn import PASSKEY, SECURITY_KEY, virtual_authenticators

pytestmark = [pytest.mark.browser, pytest.mark.proxy]

AUTH, APP = "auth.fa.localhost", "app.fa.localhost"
PASSWORDS = {"alice": "alice-long-password-1", "bob": "bob-long-password-22"}
HW_MAX_AGE = 8  # seconds: the hardware route asks for the key again after this


def config(workdir: Path, fa_port: int, state: str) -> Path:
    cli("keys", "generate", "-o", str(workdir / "keys.json"))
    cfg = {
        "server": {"listen": f"127.0.0.1:{fa_port}", "public_url": f"http://{AUTH}:{fa_port}",
                   "trusted_proxies": ["127.0.0.1/32"], "allowed_redirect_domains": [".fa.localhost"]},
        "session": {"cookie_name": "__Secure-fa", "domain": "fa.localhost", "secure": True, "lifetime": "1h",
                    "idle_timeout": "30m"},
        "keys": {"file": str(workdir / "keys.json")},
        "state": state,
        "levels": [{"name": "password", "acr": ["urn:fa:password"]}, {"name": "mfa", "acr": ["urn:fa:mfa"]},
                   {"name": "hardware", "acr": ["urn:fa:hwk"], "amr": ["hwk"]}],
        "local": {"audit": str(workdir / "audit.log"), "scrypt": {"log_n": 12}},
        "webauthn": {"rp_id": "fa.localhost", "rp_name": "Example", "level_user_verified": "hardware",
                     "level_presence": "mfa"},
        "policy": {"default": "deny", "rules": [
            {"hosts": [APP], "paths": ["/public/"], "allow": "anonymous"},
            {"hosts": [APP], "paths": ["/hw/"], "level": "hardware", "max_age": f"{HW_MAX_AGE}s"},
            {"hosts": [APP], "paths": ["/mfa/"], "level": "mfa"},
            {"hosts": [APP], "level": "password"}]},
    }
    path = workdir / "forwardauth.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_user(cfg: Path, name: str) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "forwardauth", "users", "add", name, "-c", str(cfg),
                           "--password-stdin"], input=PASSWORDS[name] + "\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


@dataclass
class Stack:
    fa_port: int
    fa: Proc
    nginx: Running
    echo: Running
    config: Path

    def app(self, path: str) -> str:
        return f"http://{APP}:{self.nginx.port}{path}"

    def auth(self, path: str) -> str:
        return f"http://{AUTH}:{self.fa_port}{path}"

    def audit(self) -> list[dict]:
        path = self.config.parent / "audit.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("webauthn-e2e")
    fa_port = free_port()
    cfg = config(workdir, fa_port, f"sqlite://{workdir / 'state.db'}")
    for name in PASSWORDS:
        add_user(cfg, name)
    echo = start_echo_app(workdir / "echo")
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", str(cfg)], workdir / "fa.log")
    fa.start()
    nginx = None
    try:
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready on /readyz", timeout=60)
        try:
            nginx = start_proxy("nginx", workdir / "nginx", fa_port, echo.port, APP, "__Secure-fa")
        except MissingTool as exc:
            missing_tool(str(exc))
        yield Stack(fa_port, fa, nginx, echo, cfg)
    finally:
        if nginx is not None:
            nginx.stop()
        fa.stop()
        echo.stop()


def echo_of(page) -> dict:
    body = json.loads(page.inner_text("body"))
    return {"path": body["path"], **{k.lower(): v for k, v in body["headers"]}}


def path_of(page) -> str:
    return urlsplit(page.url).path


def click_and_wait(page, selector: str, path: str) -> None:
    """Click (a WebAuthn button: the script posts and then navigates) and wait for `path`."""
    page.click(selector)
    page.wait_for_url(lambda url: urlsplit(url).path == path)


def sign_in_with_password(page, stack: Stack, target: str, user: str) -> None:
    page.goto(stack.app(target))
    assert path_of(page) == "/oauth2/sign_in", page.url
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_passkey_added_then_signs_in_alone_and_reaches_hardware(stack, page):
    context = page.context
    with virtual_authenticators(context, page) as auth:
        aid = auth.add(PASSKEY)
        # A password session on a hardware route: the step-up page says a key is needed.
        sign_in_with_password(page, stack, "/hw/panel", "alice")
        assert path_of(page) == "/oauth2/webauthn/step_up", page.url
        assert page.inner_text("h1") == "This page needs a security key"
        screenshot(page, "webauthn-step-up-no-key")
        click_and_wait(page, "text=Add a security key or passkey", "/oauth2/webauthn")
        screenshot(page, "webauthn-keys-empty")
        page.fill("#new-name", "Laptop passkey")
        page.click("form[data-webauthn=register] button[type=submit]")
        page.wait_for_selector("text=Added.")
        assert "Laptop passkey" in page.inner_text(".keys")
        assert "passkey" in page.inner_text(".keys .tag") and "verifies you" in page.inner_text(".keys .help")
        screenshot(page, "webauthn-keys-one-passkey")
        [held] = auth.credentials(aid)
        assert (held["isResidentCredential"], held["rpId"], held["signCount"]) == (True, "fa.localhost", 1)
        # Continue to the app: the key is used to step up to hardware.
        click_and_wait(page, "text=Continue to app.fa.localhost", "/oauth2/webauthn/step_up")
        assert page.inner_text("h1") == "Use your security key"
        screenshot(page, "webauthn-step-up")
        click_and_wait(page, "button[data-webauthn=step-up]", "/hw/panel")
        seen = echo_of(page)
        assert (seen["x-auth-request-user"], seen["x-auth-request-level"]) == ("alice", "hardware")

        # Signed out, the passkey alone signs in (no name typed) and reaches hardware.
        page.goto(stack.auth("/oauth2/sign_out"))
        page.goto(stack.app("/hw/panel"))
        assert path_of(page) == "/oauth2/sign_in"
        screenshot(page, "webauthn-sign-in-page-offers-passkey")
        # Not touched yet: the page's autofill request (conditional UI) waits, the page can be seen.
        auth.set_presence(aid, False)
        click_and_wait(page, "text=Sign in with a passkey", "/oauth2/webauthn/sign_in")
        screenshot(page, "webauthn-passkey-sign-in")
        auth.set_presence(aid, True)
        t0 = time.monotonic()
        click_and_wait(page, "button[data-webauthn=sign-in]", "/hw/panel")
        seen = echo_of(page)
        assert (seen["x-auth-request-user"], seen["x-auth-request-level"]) == ("alice", "hardware")
        print(f"passwordless sign-in through nginx: {time.monotonic() - t0:.2f}s")
        assert auth.credentials(aid)[0]["signCount"] == 3

        # max_age: after HW_MAX_AGE seconds the hardware route asks for the key again.
        time.sleep(HW_MAX_AGE + 1)
        page.goto(stack.app("/hw/panel"))
        assert path_of(page) == "/oauth2/webauthn/step_up", page.url
        click_and_wait(page, "button[data-webauthn=step-up]", "/hw/panel")
        assert echo_of(page)["x-auth-request-level"] == "hardware"
    lines = [x for x in stack.audit() if x["user"] == "alice" and x["event"] in ("webauthn_registered", "step_up",
                                                                                 "signin_ok")]
    assert [(x["event"], (x["reason"] or "").split(":")[0]) for x in lines] == [
        ("signin_ok", "password"), ("webauthn_registered", "'Laptop passkey' (passkey; model 01020304-0506-0708-"
                                                            "0102-030405060708, user verification); key " +
                                    lines[1]["reason"].rsplit(" ", 1)[-1]),
        ("step_up", "webauthn"), ("signin_ok", "webauthn"), ("step_up", "webauthn")]


def test_security_key_without_uv_reaches_mfa_not_hardware(stack, page):
    with virtual_authenticators(page.context, page) as auth:
        auth.add(SECURITY_KEY)
        sign_in_with_password(page, stack, "/mfa/", "bob")
        assert path_of(page) == "/oauth2/webauthn/step_up", page.url
        click_and_wait(page, "text=Add a security key or passkey", "/oauth2/webauthn")
        page.fill("#new-name", "YubiKey")
        page.click("form[data-webauthn=register] button[type=submit]")
        page.wait_for_selector("text=Added.")
        assert "touch only" in page.inner_text(".keys .help") and "security key" in page.inner_text(".keys .tag")
        click_and_wait(page, "text=Continue to app.fa.localhost", "/oauth2/webauthn/step_up")
        click_and_wait(page, "button[data-webauthn=step-up]", "/mfa/")
        seen = echo_of(page)
        assert (seen["x-auth-request-user"], seen["x-auth-request-level"]) == ("bob", "mfa")
        # hardware needs user verification: this key cannot give it, the browser refuses, the page says so.
        page.goto(stack.app("/hw/x"))
        assert path_of(page) == "/oauth2/webauthn/step_up"
        assert "the keys you registered here only sense a touch" in page.inner_text(".explain")
        page.click("button[data-webauthn=step-up]")
        page.wait_for_selector("[data-webauthn-error]:not([hidden])")
        assert page.inner_text("[data-webauthn-error]") == ("Cancelled, timed out, or no usable security key or "
                                                            "passkey.")
        screenshot(page, "webauthn-step-up-key-without-uv-refused")
        assert path_of(page) == "/oauth2/webauthn/step_up"


def test_a_removed_passkey_no_longer_signs_in(stack, page):
    # The first test's passkey lived in its own browser: an administrator removes it (the real CLI).
    assert cli("webauthn", "remove", "-c", str(stack.config), "alice", "--all") == \
        "alice: 1 security key(s) and passkey(s) removed\n"
    with virtual_authenticators(page.context, page) as auth:
        auth.add(PASSKEY)
        sign_in_with_password(page, stack, "/", "alice")
        page.goto(stack.auth("/oauth2/webauthn"))
        page.fill("#new-name", "Phone")
        page.click("form[data-webauthn=register] button[type=submit]")
        page.wait_for_selector("text=Added.")
        # Removing needs what a key proves, recently: the password alone is not enough now.
        assert "confirm it is you" in page.inner_text("main")
        screenshot(page, "webauthn-keys-confirm-first")
        click_and_wait(page, "text=Confirm with your security key or passkey", "/oauth2/webauthn/step_up")
        click_and_wait(page, "button[data-webauthn=step-up]", "/oauth2/webauthn")
        page.click("form[action$='/remove'] button")
        page.wait_for_selector("text=Removed.")
        assert "You have no security key or passkey here yet." in page.inner_text("main")
        page.goto(stack.auth("/oauth2/sign_out"))
        page.goto(stack.app("/hw/panel"))
        click_and_wait(page, "text=Sign in with a passkey", "/oauth2/webauthn/sign_in")
        page.click("button[data-webauthn=sign-in]")
        page.wait_for_selector("[data-webauthn-error]:not([hidden])")
        assert page.inner_text("[data-webauthn-error]") == ("This security key or passkey is not registered here "
                                                            "(or it was removed).")
        screenshot(page, "webauthn-removed-passkey-refused")


def test_conditional_ui_offers_the_passkey_in_the_name_field(stack, page):
    """The passkey page asks for a passkey through the name field's autofill (mediation
    "conditional") as soon as it opens; Chromium's virtual authenticator answers that
    request by itself, as a person picking their passkey in the autofill would."""
    assert cli("webauthn", "remove", "-c", str(stack.config), "alice", "--all").startswith("alice: ")
    with virtual_authenticators(page.context, page) as auth:
        auth.add(PASSKEY)
        sign_in_with_password(page, stack, "/", "alice")
        page.goto(stack.auth("/oauth2/webauthn"))
        page.fill("#new-name", "Laptop")
        page.click("form[data-webauthn=register] button[type=submit]")
        page.wait_for_selector("text=Added.")
        page.goto(stack.auth("/oauth2/sign_out"))
        page.goto(stack.app("/hw/panel"))
        page.click("text=Sign in with a passkey")
        page.wait_for_url(lambda url: urlsplit(url).path == "/hw/panel")  # nothing clicked on the passkey page
        assert (echo_of(page)["x-auth-request-user"], echo_of(page)["x-auth-request-level"]) == ("alice", "hardware")
