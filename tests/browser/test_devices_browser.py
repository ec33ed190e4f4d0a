"""Device approval in real headless Chromium: a desktop browser and a phone.

The stack is the local one (tests/browser/test_local_browser.py): the embedded
default config (which turns device approval on at mfa) behind the shipped
examples/local/nginx.conf, in front of the echo app, all on 127.0.0.1.

- Pairing: a browser signed in at mfa (minted with `forwardauth session
  issue`, as an operator would for a first device; a user would step up with
  TOTP) opens /oauth2/devices and adds a device; a second context with a
  phone's viewport opens the address the QR code holds and pairs: the phone
  page keeps the credential and long-polls.
- Step-up: a desktop context signs in with alice's password, asks for /admin/
  (mfa), takes "Approve on my device" on the step-up page and waits on the
  phrase; the phone shows the request with three phrases, the right one is
  tapped, and the desktop lands on /admin/ at mfa.
- Passwordless sign-in with a wrong phrase: the phone denies, says why, and
  the desktop page says "Denied".

Screenshots of both sides go to test-artifacts/screenshots/devices-*.png.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from test_local_browser import HOST, PASSWORD, add_user, default_config, local_nginx_conf

from harness.browser import SCREENSHOTS, chromium, screenshot
from harness.ci import missing_tool
from harness.forwardauth import cli
from harness.procs import Proc, free_port, http_status
from harness.proxies import MissingTool, require, start_echo_app

pytestmark = [pytest.mark.browser, pytest.mark.proxy]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2,
         "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/126.0 Mobile Safari/537.36"}
DESKTOP = {"viewport": {"width": 1100, "height": 820}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        nginx_bin = require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    workdir = tmp_path_factory.mktemp("devices-browser")
    echo = start_echo_app(workdir / "echo")
    port, fa_port = free_port(), free_port()
    config = default_config(workdir, fa_port)
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", config], workdir / "forwardauth.log")
    fa.start()
    nginx = None
    try:
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready on /readyz", timeout=60)
        add_user(config, "alice", PASSWORD, "staff")
        (workdir / "nginx").mkdir()
        conf = workdir / "nginx" / "nginx.conf"
        conf.write_text(local_nginx_conf(port, fa_port, echo.port))
        nginx = Proc("nginx", [nginx_bin, "-p", str(workdir / "nginx"), "-c", str(conf), "-e", "stderr"],
                     workdir / "nginx" / "nginx.log")
        nginx.start()
        nginx.wait_until(lambda: http_status(port, "/public/x") == 200, what="serving /public/")
        yield {"app": f"http://{HOST}:{port}", "fa": f"http://{HOST}:{fa_port}", "config": config, "log": fa}
    finally:
        if nginx is not None:
            nginx.stop()
        fa.stop()
        echo.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium(hosts=()) as b:
        yield b


@pytest.fixture(scope="module")
def phone(stack, browser):
    """The paired phone page, open (and long-polling) for the whole module."""
    setup = browser.new_context(**DESKTOP)
    cookie = cli("session", "issue", "-c", str(stack["config"]), "--user", "alice", "--level", "mfa").strip()
    setup.add_cookies([{"name": "forwardauth", "value": cookie, "url": stack["fa"]}])
    page = setup.new_page()
    page.goto(stack["fa"] + "/oauth2/devices")
    page.click("#add-device")
    page.wait_for_selector("#pairing svg")
    screenshot(page, "devices-01-devices-page-with-qr")
    pair_url = page.get_attribute("#pair-url", "href")
    assert pair_url.startswith(stack["fa"] + "/oauth2/devices/phone#code=")
    setup.close()

    ctx = browser.new_context(**PHONE)
    p = ctx.new_page()
    p.goto(pair_url)
    p.wait_for_selector("#pair:not([hidden])")
    assert "#code=" not in p.url  # the code leaves the address bar and the history at once
    p.fill("#device-name", "Alice's phone")
    screenshot(p, "devices-02-phone-pairing")
    p.click("#pair-button")
    p.wait_for_selector("#watching:not([hidden])")
    assert "Paired: sign-ins of alice can be approved here." in p.inner_text("#status")
    screenshot(p, "devices-03-phone-waiting")
    yield p
    ctx.close()


def shot_of_a_refreshing_page(page, name: str) -> None:
    """The waiting page reloads itself every second: a capture that straddles a
    reload is taken again (up to five times)."""
    from playwright.sync_api import Error

    for _ in range(5):
        try:
            page.wait_for_selector("#phrase", timeout=5000)
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), timeout=5000)
            return
        except Error:
            continue
    screenshot(page, name)


def desktop_waits_on_a_phrase(page) -> str:
    page.wait_for_selector("#phrase")
    return page.inner_text("#phrase")


def tap(phone, phrase: str) -> None:
    """The phone shows the request with three phrases; tap `phrase`."""
    phone.wait_for_selector(".request button[data-phrase]")
    shown = phone.eval_on_selector_all(".request button[data-phrase]", "bs => bs.map(b => b.dataset.phrase)")
    assert len(shown) == 3
    phone.click(f'.request button[data-phrase="{phrase}"]')


def test_step_up_on_the_desktop_approved_on_the_phone(stack, browser, phone):
    ctx = browser.new_context(**DESKTOP)
    page = ctx.new_page()
    page.goto(stack["app"] + "/admin/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Approve on my device")  # mfa: the step-up page offers it next to TOTP set-up
    page.click("text=Approve on my device")
    page.click("#send")
    phrase = desktop_waits_on_a_phrase(page)
    shot_of_a_refreshing_page(page, "devices-04-desktop-waiting-on-the-phrase")

    phone.wait_for_selector(".request")
    card = phone.inner_text(".request")
    assert "Sign-in to 127.0.0.1/admin/" in card and "level mfa" in card
    screenshot(phone, "devices-05-phone-three-phrases")
    tap(phone, phrase)
    phone.wait_for_selector("text=Approved")
    screenshot(phone, "devices-06-phone-approved")

    page.wait_for_url(stack["app"] + "/admin/", timeout=10000)
    echoed = json.loads(page.inner_text("body"))
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert (headers["x-auth-request-user"], headers["x-auth-request-level"]) == ("alice", "mfa")
    screenshot(page, "devices-07-desktop-landed-at-mfa")
    ctx.close()


def test_passwordless_sign_in_with_the_wrong_phrase_is_denied(stack, browser, phone):
    ctx = browser.new_context(**DESKTOP)
    page = ctx.new_page()
    page.goto(stack["app"] + "/admin/")
    page.click("text=Sign in by approving on my device")
    page.fill("#username", "alice")
    page.click("#send")
    phrase = desktop_waits_on_a_phrase(page)

    phone.wait_for_selector(".request button[data-phrase]")
    wrong = next(p for p in phone.eval_on_selector_all(".request button[data-phrase]",
                                                       "bs => bs.map(b => b.dataset.phrase)") if p != phrase)
    tap(phone, wrong)
    phone.wait_for_selector("text=that is not the phrase the browser showed")
    screenshot(phone, "devices-08-phone-wrong-phrase-denied")

    page.wait_for_selector("h1:has-text('Denied')", timeout=10000)
    assert "The phrase picked on the device was not the one this page showed" in page.inner_text("main")
    screenshot(page, "devices-09-desktop-denied")
    ctx.close()
    audit = [json.loads(line) for line in stack["log"].log().splitlines()
             if line.startswith('{"time":') and '"event":' in line]
    events = [a["event"] for a in audit if a["event"].startswith(("approval_", "device_"))]
    assert events[:2] == ["device_paired", "approval_requested"] and "approval_wrong_phrase" in events
    assert not re.search(re.escape(phrase), stack["log"].log())  # never a phrase in a log
