"""The devices part in the app (composition.build_app, in process): the offers
on the sign-in, step-up and TOTP pages, /oauth2/start handing over, the
devices page (freshness, adding with a QR code, removing), the phone page's
CSP, and the browser's side of an approval: step-up and passwordless sign-in,
right phrase, wrong phrase, cancel, used once. Exact statuses and texts."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app
from forwardauth.core.runtime import Runtime
from forwardauth.devices import credentials
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account

from .conftest import BASE, make_config

CONFIG = BASE.replace("trusted_proxies: [127.0.0.1/32]",
                      "trusted_proxies: [127.0.0.1/32]\n  allowed_redirect_domains: [.example.com]").replace(
    "amr: [otp, mfa]}", "amr: [otp, mfa], local_factor: totp}") + """
local: {}
devices: {level: mfa}
policy: {rules: [{hosts: [app.example.com], level: mfa}]}
"""
RD = "https://app.example.com/admin"
Q = quote(RD, safe="")


class App:
    def __init__(self, client: TestClient, rt: Runtime, store: MemoryStore) -> None:
        self.c, self.rt, self.store = client, rt, store

    def sign_in(self, user: str = "alice", level: str = "password", proven_ago: float = 0.0) -> str:
        now = time.time()
        s = self.rt.codec.new(user, level, now - proven_ago, proofs={level: now - proven_ago})
        self.c.session.cookie_jar.update_cookies({"fa": self.rt.codec.seal(s)})
        return s.sid

    async def get(self, path: str, **kw):
        r = await self.c.get(path, allow_redirects=False, **kw)
        return r, await r.text()

    async def post(self, path: str, data: dict, **kw):
        r = await self.c.post(path, data=data, allow_redirects=False, **kw)
        return r, await r.text()

    async def pair(self, user: str = "alice") -> tuple[str, str]:
        code, _ = await self.svc.new_pairing_code(user)
        r = await self.c.post("/api/v1/device/pair", json={"code": code, "name": "phone"})
        body = await r.json()
        assert r.status == 201, body
        return body["device"]["id"], body["credential"]

    @property
    def svc(self):
        from forwardauth.devices.context import service_of

        return service_of(self.c.server.app)


@pytest.fixture
async def app():
    rt = Runtime.build(make_config("", CONFIG))
    store = MemoryStore()
    await store.add_account(Account("alice", groups=("staff",), email="alice@example.com", created=1.0, updated=1.0))
    await store.add_account(Account("svc", kind="system", created=1.0, updated=1.0))
    async with TestClient(TestServer(build_app(rt, store), host="127.0.0.1")) as c:
        yield App(c, rt, store)


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


# --- offers and /oauth2/start ---------------------------------------------------------------

async def test_sign_in_page_offers_passwordless_approval(app):
    r, html = await app.get(f"/oauth2/sign_in?rd={Q}&level=mfa")
    assert r.status == 200
    assert f'href="/oauth2/start?rd={Q}&amp;level=mfa&amp;via=device">Sign in by approving on my device' in html


async def test_step_up_page_offers_approval(app):
    app.sign_in()  # alice has no TOTP: /oauth2/start sends her to the step-up page
    r, html = await app.get(f"/oauth2/step_up?rd={Q}&level=mfa")
    assert r.status == 200
    assert f'<a class="button" href="/oauth2/start?rd={Q}&amp;level=mfa&amp;via=device">Approve on my device</a>' in html


async def test_totp_page_offers_approval_next_to_the_code(app):
    from forwardauth.signin.totp import SecretBox

    sealed = SecretBox(app.rt.keyring).seal("carol", "JBSWY3DPEHPK3PXP")
    await app.store.add_account(Account("carol", totp_secret_enc=sealed, created=1.0, updated=1.0))
    app.sign_in("carol")
    r, html = await app.get(f"/oauth2/totp?rd={Q}&level=mfa")
    assert r.status == 200 and 'name="code"' in html
    assert f'<p class="alt"><a href="/oauth2/start?rd={Q}&amp;level=mfa&amp;via=device">Approve on my device</a>' in html


async def test_start_hands_over_only_when_chosen(app):
    app.sign_in()
    r, _ = await app.get(f"/oauth2/start?rd={Q}&via=device")
    assert (r.status, r.headers["Location"]) == (302, f"/oauth2/devices/approve?rd={Q}&level=mfa")
    r, _ = await app.get(f"/oauth2/start?rd={Q}")  # not chosen: the local factor answers (no TOTP yet: step-up page)
    assert (r.status, r.headers["Location"]) == (302, f"/oauth2/step_up?rd={Q}&level=mfa")


# --- the devices page ---------------------------------------------------------------------------

async def test_devices_page_needs_a_fresh_mfa_sign_in(app):
    r, _ = await app.get("/oauth2/devices")
    assert r.status == 302 and r.headers["Location"].startswith("/oauth2/sign_in?")
    app.sign_in(level="mfa", proven_ago=3600)  # mfa, but an hour ago (pairing_max_age 10m)
    r, _ = await app.get("/oauth2/devices")
    assert r.status == 302 and r.headers["Location"].startswith("/oauth2/") and "level=mfa" in r.headers["Location"]
    app.sign_in(level="mfa")
    r, html = await app.get("/oauth2/devices")
    assert r.status == 200 and 'id="no-devices"' in html and 'id="add-device"' in html


async def test_add_a_device_with_a_qr_code_then_remove_it(app):
    app.sign_in(level="mfa")
    _, html = await app.get("/oauth2/devices")
    r, html = await app.post("/oauth2/devices/add", {"csrf": csrf(html)})
    assert r.status == 200 and "<svg" in html
    code = re.search(r'id="pair-code">([A-Z2-9-]+)<', html).group(1)
    assert re.search(rf"forwardauth device pair https://auth.example.com {code}</code>", html)
    assert credentials.normalise_code(code)
    r = await app.c.post("/api/v1/device/pair", json={"code": code, "name": "my phone"})
    body = await r.json()
    assert r.status == 201 and body["device"]["name"] == "my phone"
    _, html = await app.get("/oauth2/devices")
    assert f'data-device="{body["device"]["id"]}"' in html and "<td>my phone</td>" in html
    r, _ = await app.post("/oauth2/devices/remove", {"csrf": csrf(html), "id": body["device"]["id"]})
    assert (r.status, r.headers["Location"]) == (303, "/oauth2/devices")
    r = await app.c.get("/api/v1/device/requests", headers={"Authorization": f"Bearer {body['credential']}"})
    assert r.status == 401


async def test_devices_forms_refuse_a_bad_csrf_token(app):
    app.sign_in(level="mfa")
    r, html = await app.post("/oauth2/devices/add", {"csrf": "nope"})
    assert r.status == 403 and "This form has expired or was not sent from this site. Please try again." in html


# --- the phone page ---------------------------------------------------------------------------

async def test_phone_page_alone_may_run_its_own_script(app):
    r, html = await app.get("/oauth2/devices/phone")
    assert r.status == 200 and '<script src="/oauth2/static/devices-phone.js"></script>' in html
    assert r.headers["Content-Security-Policy"].endswith("; script-src 'self'; connect-src 'self'")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    r, _ = await app.get("/oauth2/sign_in")
    assert "script-src" not in r.headers["Content-Security-Policy"]
    r, js = await app.get("/oauth2/static/devices-phone.js")
    assert r.status == 200 and r.content_type == "text/javascript" and '"use strict";' in js


# --- an approval, in the browser ---------------------------------------------------------------

async def ask(app, username: str | None = None) -> tuple[str, str]:
    """The approve page's form sent; (wait page html, phrase)."""
    _, html = await app.get(f"/oauth2/devices/approve?rd={Q}&level=mfa")
    form = {"csrf": csrf(html), "rd": RD, "level": "mfa"}
    if username is not None:
        form["username"] = username
    r, _ = await app.post("/oauth2/devices/approve", form)
    assert (r.status, r.headers["Location"]) == (303, "/oauth2/devices/wait"), r
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 200 and '<meta http-equiv="refresh" content="1">' in html
    return html, re.search(r'id="phrase">([a-z ]+)<', html).group(1)


async def answer(app, credential: str, pick) -> None:
    r = await app.c.get("/api/v1/device/requests", headers={"Authorization": f"Bearer {credential}"})
    req = (await r.json())["requests"][0]
    phrase = pick(req["phrases"])
    body = {"decision": "deny"} if phrase is None else {"decision": "approve", "phrase": phrase}
    r = await app.c.post(f"/api/v1/device/requests/{req['id']}", json=body,
                         headers={"Authorization": f"Bearer {credential}"})
    assert r.status == 200


def session_of(app, response):
    return app.rt.codec.open(response.cookies["fa"].value, time.time()).session


def ticket_cookie(app):
    return next((c for c in app.c.session.cookie_jar if c.key.endswith("-approval")), None)


async def test_step_up_by_approval(app):
    _, cred = await app.pair()
    old_sid = app.sign_in()
    _, phrase = await ask(app)
    await answer(app, cred, lambda phrases: phrase)
    r, _ = await app.get("/oauth2/devices/wait")
    assert (r.status, r.headers["Location"]) == (303, RD)
    s = session_of(app, r)
    assert (s.sub, s.level, s.sid != old_sid) == ("alice", "mfa", True) and time.time() - s.proofs["mfa"] < 5
    assert "password" in s.proofs  # what it proved before is kept
    assert ticket_cookie(app) is None  # the ticket is cleared
    snap = await app.store.revocations(time.time())
    assert old_sid in snap.revoked  # the old cookie is dead


async def test_passwordless_sign_in_by_approval(app):
    _, cred = await app.pair()
    _, phrase = await ask(app, username="Alice ")
    await answer(app, cred, lambda phrases: phrase)
    r, _ = await app.get("/oauth2/devices/wait")
    assert (r.status, r.headers["Location"]) == (303, RD)
    s = session_of(app, r)
    assert (s.sub, s.level, s.source, s.groups, s.email) == ("alice", "mfa", "local", ("staff",), "alice@example.com")


async def test_a_wrong_phrase_is_denied_and_said_so(app):
    _, cred = await app.pair()
    app.sign_in()
    _, phrase = await ask(app)
    await answer(app, cred, lambda phrases: next(p for p in phrases if p != phrase))
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 403 and "The phrase picked on the device was not the one this page showed" in html
    assert (await app.store.pending("alice", time.time())) == []


async def test_deny_and_cancel_say_so(app):
    _, cred = await app.pair()
    app.sign_in()
    await ask(app)
    await answer(app, cred, lambda phrases: None)
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 403 and "The request was denied on the device." in html
    html, _ = await ask(app)
    r, _ = await app.post("/oauth2/devices/cancel", {"csrf": csrf(html)})
    assert (r.status, r.headers["Location"]) == (303, "/oauth2/devices/wait")
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 200 and "You cancelled the request." in html


async def test_an_approval_is_used_once(app):
    """The ticket cookie replayed after the approval was used: refused, on every replica (claim_once)."""
    _, cred = await app.pair()
    app.sign_in()
    _, phrase = await ask(app)
    kept = ticket_cookie(app)
    await answer(app, cred, lambda phrases: phrase)
    r, _ = await app.get("/oauth2/devices/wait")
    assert r.status == 303
    app.c.session.cookie_jar.update_cookies({kept.key: kept.value})
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 409 and "This approval has been used already." in html


async def test_a_step_up_needs_the_session_that_asked(app):
    _, cred = await app.pair()
    app.sign_in()
    _, phrase = await ask(app)
    await answer(app, cred, lambda phrases: phrase)
    app.sign_in()  # another session in this browser meanwhile
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 401 and "The sign-in that asked for this approval has ended or changed in this browser." in html


async def test_passwordless_for_a_system_or_unknown_account(app):
    _, cred = await app.pair("svc")
    _, phrase = await ask(app, username="svc")
    await answer(app, cred, lambda phrases: phrase)
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 403 and "This account cannot sign in here." in html
    # An account without a device gets the same answer as one with a device: a
    # phrase to wait on (the request is never seen, and expires), nothing that
    # tells a stranger which accounts have one.
    html, _ = await ask(app, username="nobody")
    assert "It was sent to the devices of <strong>nobody</strong>" in html


async def test_without_a_ticket(app):
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 400 and "No approval is waiting in this browser." in html
    app.c.session.cookie_jar.update_cookies({"fa-approval": "k1.forged"})
    r, html = await app.get("/oauth2/devices/wait")
    assert r.status == 400 and "No approval is waiting in this browser." in html


async def test_everything_is_off_without_the_section():
    rt = Runtime.build(make_config("policy: {rules: []}\n", BASE))
    async with TestClient(TestServer(build_app(rt, MemoryStore()), host="127.0.0.1")) as c:
        r = await c.get("/api/v1/device/requests")
        assert (r.status, await r.json()) == (404, {"error": "not_found",
                                                    "error_description": "device approval is not enabled here"})
        r = await c.get("/oauth2/devices", allow_redirects=False)
        assert r.status == 404 and "Approving on a device is not enabled here." in await r.text()
        r = await c.get("/oauth2/sign_in")
        assert "via=device" not in await r.text()


# --- the waiting polls' gauge ------------------------------------------------------------------

def waiting_polls(metrics: str) -> list[float]:
    return [float(v) for v in re.findall(r"^forwardauth_device_polls_waiting (\S+)$", metrics, re.M)]


async def test_waiting_polls_gauge_is_per_app(app):
    """forwardauth_device_polls_waiting counts this app's waiting polls: a second app in the
    same process shows its own 0, and the gauge falls back when the poll is answered."""
    import asyncio

    rt = Runtime.build(make_config("", CONFIG))
    async with TestClient(TestServer(build_app(rt, MemoryStore()), host="127.0.0.1")) as other:
        _, cred = await app.pair()
        auth = {"Authorization": f"Bearer {cred}"}
        r = await app.c.get("/api/v1/device/requests", headers=auth)
        etag = r.headers["ETag"]
        assert waiting_polls(await (await app.c.get("/metrics")).text()) == [0.0]
        poll = asyncio.ensure_future(app.c.get("/api/v1/device/requests", headers={**auth, "If-None-Match": etag}))
        for _ in range(50):
            await asyncio.sleep(0.02)
            if waiting_polls(await (await app.c.get("/metrics")).text()) == [1.0]:
                break
        assert waiting_polls(await (await app.c.get("/metrics")).text()) == [1.0]
        assert waiting_polls(await (await other.get("/metrics")).text()) == [0.0]
        await app.svc.request_approval("alice", "app.example.com", "/admin", "203.0.113.5", "Firefox/130")
        r = await asyncio.wait_for(poll, 5)
        assert r.status == 200 and r.headers["ETag"] != etag
        assert waiting_polls(await (await app.c.get("/metrics")).text()) == [0.0]
