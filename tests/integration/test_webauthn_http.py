"""Passkeys and security keys over HTTP: adding, renaming, removing, stepping up.

The real app (local accounts and the WebAuthn part), a real SQLite file and
audit file, aiohttp's test client for the browser's requests, and the
software authenticator for the browser's WebAuthn answers. Every refusal is
asserted with its status, its exact message and its audit line.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote, urlencode

import pytest

from forwardauth.state.records import webauthn_fingerprint
from harness.softkey import SoftAuthenticator
from harness.webauthn_site import HW_RD, MFA_RD, ORIGIN, hidden_fields, human, make_site

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; "
       "script-src 'self'; connect-src 'self'")
MSG_CSRF = "This page has expired or was not sent from this site. Please reload it and try again."
MSG_EXPIRED = "This request has expired or was already used. Please try again."
MSG_FRESH = "To add or remove security keys and passkeys, sign in again first (it must be recent)."
MSG_SESSION_ENDED = "Your session has ended. Please sign in again."


@pytest.fixture
async def site(tmp_path):
    s = await make_site(tmp_path, accounts=(human("alice"), human("bob")))
    yield s
    await s.close()


async def test_without_the_section_the_pages_are_not_there(tmp_path):
    s = await make_site(tmp_path, webauthn="", accounts=(human("alice"),))
    try:
        await s.sign_in()
        for path in ("/oauth2/webauthn", "/oauth2/webauthn/step_up", "/oauth2/webauthn/sign_in"):
            assert "Passkeys and security keys are not set up here." in await s.page(path, 404)
        assert await s.post_json("/oauth2/webauthn/register/options", {}) == (
            404, {"error": "Passkeys and security keys are not set up here."})
        page = await s.page("/oauth2/sign_in?" + urlencode({"rd": HW_RD}))
        assert "passkey" not in page
    finally:
        await s.close()


async def test_the_keys_page_needs_a_session(site):
    r = await site.client.get("/oauth2/webauthn", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, "/oauth2/start?rd=" + quote(ORIGIN + "/oauth2/webauthn", safe=""))


async def test_the_pages_run_only_forwardauths_script(site):
    await site.sign_in()
    r = await site.client.get("/oauth2/webauthn")
    assert r.status == 200 and r.headers["Content-Security-Policy"] == CSP
    page = await r.text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/oauth2/static/webauthn.js" defer>']
    assert "style=" not in page and "onclick" not in page
    js = await site.client.get("/oauth2/static/webauthn.js")
    assert js.status == 200 and js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "navigator.credentials.create" in await js.text()
    # The other pages keep the one policy without scripts.
    r = await site.client.get("/oauth2/sign_in")
    assert "script-src" not in r.headers["Content-Security-Policy"]


async def test_add_a_key_then_it_is_listed_and_audited(site):
    await site.sign_in()
    key = SoftAuthenticator(backup_eligible=True, backed_up=True)
    mark = site.mark()
    assert await site.register(key, name="Laptop passkey") == (200, {"redirect": "/oauth2/webauthn?done=added"})
    [cred] = await site.store.webauthn_credentials("alice")
    assert site.since(mark) == [("webauthn_registered", "alice",
                                 f"'Laptop passkey' (passkey; model {cred.aaguid}, user verification, synced); "
                                 f"key {webauthn_fingerprint(cred.id)}")]
    page = await site.page("/oauth2/webauthn?done=added")
    assert '<p class="notice info" role="status" id="info">Added.</p>' in page
    assert "<strong>Laptop passkey</strong> <span class=\"tag\">passkey</span> <span class=\"tag\">synced</span>" in page
    assert "verifies you (PIN, fingerprint or face)" in page and cred.public_key.hex() not in page


@pytest.mark.parametrize("how, status, message, reason", [
    ("no session", 401, MSG_SESSION_ENDED, "register: no session"),
    ("bad csrf", 403, MSG_CSRF, "register: csrf"),
    ("not json", 415, "The request must be JSON.", "not_json"),
    ("too large", 413, "The request is too large.", "oversized"),
    ("bad json", 400, "The request could not be read.", "malformed_json"),
    ("unknown field", 400, "The request could not be read.", "malformed_json"),
    ("other origin", 401, "The security key answered for another site.",
     "register: origin not allowed ('https://evil.example.net')"),
    ("replayed", 400, MSG_EXPIRED, "register: challenge already used"),
    ("no challenge", 400, MSG_EXPIRED, "register: no valid challenge (start again)"),
])
async def test_adding_a_key_refused(site, how, status, message, reason):
    await site.sign_in()
    key = SoftAuthenticator()
    attrs_page = await site.page("/oauth2/webauthn")
    csrf = re.search(r'data-csrf="([^"]+)"', attrs_page).group(1)
    path = "/oauth2/webauthn/register"
    st, options = await site.post_json(path + "/options", {"csrf": csrf, "name": "k"})
    assert st == 200
    body = {"csrf": csrf, "name": "k", "credential": key.create(options, ORIGIN)}
    kw = {}
    if how == "no session":
        site.client.session.cookie_jar.clear(lambda c: c.key == "fa")
    elif how == "bad csrf":
        body["csrf"] = "x" + csrf[1:]
    elif how == "not json":
        kw = {"headers": {"Content-Type": "text/plain"}}
    elif how == "too large":
        body["name"] = "k"
        body["credential"]["pad"] = "x" * 70_000
    elif how == "unknown field":
        body["extra"] = "1"
    elif how == "other origin":
        body["credential"] = key.create(options, "https://evil.example.net")
    elif how == "replayed":  # the same answer and challenge cookie again (the first answer cleared the cookie)
        jar = site.client.session.cookie_jar
        sealed = {c.key: c.value for c in jar if "webauthn" in c.key}
        assert (await site.post_json(path, body))[0] == 200
        await site.store.remove_webauthn_credentials("alice")
        jar.update_cookies(sealed)
    elif how == "no challenge":
        site.client.session.cookie_jar.clear(lambda c: "webauthn" in c.key)
    mark = site.mark()
    sent = "{not json" if how == "bad json" else body
    assert await site.post_json(path, sent, **kw) == (status, {"error": message})
    assert site.since(mark) == [("webauthn_failed", None if how == "no session" else "alice", reason)]
    assert await site.store.webauthn_credentials("alice") == []


def _stale(site, age: float = 1200) -> None:
    """The current session (same id: its CSRF tokens stay valid), its proofs made `age` seconds old."""
    from dataclasses import replace

    jar = site.client.session.cookie_jar
    s = site.rt.codec.open(next(c.value for c in jar if c.key == "fa"), time.time()).session
    jar.update_cookies({"fa": site.rt.codec.seal(replace(s, proofs={k: v - age for k, v in s.proofs.items()}))},
                       site.client.make_url("/"))


def _csrf(page: str) -> str:
    return re.search(r'data-csrf="([^"]+)"', page).group(1)


async def test_adding_a_key_needs_a_recent_sign_in(site):
    await site.sign_in()
    csrf = _csrf(await site.page("/oauth2/webauthn"))
    _stale(site)
    page = await site.page("/oauth2/webauthn")
    assert "confirm it is you (within the last 10 minutes, at level <em>password</em>)" in page
    assert 'data-webauthn="register"' not in page and "Confirm with your security key" not in page
    here = quote(ORIGIN + "/oauth2/webauthn", safe="")
    reauth = "/oauth2/sign_out?rd=" + quote(f"/oauth2/start?rd={here}&level=password", safe="")
    assert f'<a class="button" href="{reauth}">Sign in again</a>' in page
    mark = site.mark()
    assert await site.post_json("/oauth2/webauthn/register/options", {"csrf": csrf}) == (403, {"error": MSG_FRESH})
    assert site.since(mark) == [("webauthn_failed", "alice", "register: not fresh (password)")]
    await site.sign_in()  # recent again
    assert (await site.register(SoftAuthenticator()))[0] == 200


async def test_a_second_key_needs_what_a_key_proves(site):
    await site.sign_in()
    first = SoftAuthenticator()
    csrf = _csrf(await site.page("/oauth2/webauthn"))
    assert (await site.register(first))[0] == 200
    # A recent password alone no longer adds keys: it needs mfa (what a touch of a key proves) or more.
    page = await site.page("/oauth2/webauthn")
    assert 'data-webauthn="register"' not in page
    assert "confirm it is you (within the last 10 minutes, at level <em>mfa</em>)" in page
    confirm = "/oauth2/webauthn/step_up?" + urlencode({"rd": ORIGIN + "/oauth2/webauthn", "level": "mfa",
                                                       "again": "1"})
    assert f'href="{confirm.replace("&", "&amp;")}">Confirm with your security key or passkey</a>' in page
    mark = site.mark()
    assert await site.post_json("/oauth2/webauthn/register/options", {"csrf": csrf}) == (403, {"error": MSG_FRESH})
    assert site.since(mark) == [("webauthn_failed", "alice", "register: not fresh (mfa)")]
    assert await site.step_up(first, rd=ORIGIN + "/oauth2/webauthn", level="mfa", again=True) == (
        200, {"redirect": ORIGIN + "/oauth2/webauthn"})
    assert (await site.register(SoftAuthenticator(), name="Backup"))[0] == 200
    assert [c.name for c in await site.store.webauthn_credentials("alice")] == ["my key", "Backup"]


async def test_rename_and_remove(site):
    await site.sign_in()
    key = SoftAuthenticator()
    await site.register(key, name="Old name")
    [cred] = await site.store.webauthn_credentials("alice")
    await site.step_up(key, rd=ORIGIN + "/oauth2/webauthn", level="mfa", again=True)  # recent enough for changes
    fields = hidden_fields(await site.page("/oauth2/webauthn"))
    form = {"csrf": fields["csrf"], "id": cred.key, "rd": "", "level": ""}

    async def post(path: str, data: dict):
        return await site.client.post(path, data=urlencode(data), allow_redirects=False,
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})

    mark = site.mark()
    r = await post("/oauth2/webauthn/rename", {**form, "name": " Work key "})
    assert (r.status, r.headers["Location"]) == (303, "/oauth2/webauthn?done=renamed")
    assert (await site.store.webauthn_credential(cred.id)).name == "Work key"
    r = await post("/oauth2/webauthn/rename", {**form, "name": "\x07"})
    assert r.status == 400 and "A name is 1 to 64 printable characters." in await r.text()
    r = await post("/oauth2/webauthn/rename", {**form, "csrf": "nope", "name": "x"})
    assert r.status == 403 and MSG_CSRF in await r.text()
    r = await post("/oauth2/webauthn/remove", {**form, "id": "AAAA"})
    assert r.status == 404 and "No such security key or passkey." in await r.text()
    r = await post("/oauth2/webauthn/remove", form)
    assert (r.status, r.headers["Location"]) == (303, "/oauth2/webauthn?done=removed")
    assert await site.store.webauthn_credentials("alice") == []
    fp = webauthn_fingerprint(cred.id)
    assert site.since(mark) == [
        ("webauthn_renamed", "alice", f"'Old name' -> 'Work key'; key {fp}"),
        ("webauthn_failed", "alice", "rename: csrf"),
        ("webauthn_failed", "alice", "remove: no such key"),
        ("webauthn_removed", "alice", f"'Work key' by the user; key {fp}")]


async def test_start_sends_a_password_session_with_a_key_to_the_step_up_page(site):
    await site.sign_in()
    r = await site.client.get("/oauth2/start?" + urlencode({"rd": HW_RD}), allow_redirects=False)
    # No key yet: the step-up page says how to add one.
    step_up = "/oauth2/webauthn/step_up?" + urlencode({"rd": HW_RD, "level": "hardware"})
    assert (r.status, r.headers["Location"]) == (302, step_up)
    page = await site.page(step_up)
    assert "This page needs a security key" in page and 'data-webauthn="step-up"' not in page
    assert 'href="/oauth2/webauthn?' + urlencode({"rd": HW_RD, "level": "hardware"}).replace("&", "&amp;") \
        + '">Add a security key or passkey</a>' in page
    key = SoftAuthenticator()
    assert (await site.register(key, page="/oauth2/webauthn?" + urlencode({"rd": HW_RD, "level": "hardware"})))[1] \
        == {"redirect": "/oauth2/webauthn?" + urlencode({"rd": HW_RD, "level": "hardware", "done": "added"})}
    page = await site.page(step_up)
    assert "Use your security key or passkey</button>" in page
    mark = site.mark()
    assert await site.step_up(key) == (200, {"redirect": HW_RD})
    [line] = site.audit()[mark:]
    assert (line["event"], line["user"], line["host"], line["path"], line["level"]) == (
        "step_up", "alice", "app.example.com", "/hw/panel", "hardware")
    info = await site.userinfo()
    assert (info["level"], sorted(info["proven"])) == ("hardware", ["hardware", "password"])
    r = await site.client.get("/oauth2/start?" + urlencode({"rd": HW_RD}), allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, HW_RD)  # satisfied now (max_age 5m)


async def test_a_touch_without_user_verification_reaches_mfa_not_hardware(site):
    await site.sign_in()
    key = SoftAuthenticator(user_verification=False, transports=("usb",))
    assert (await site.register(key, name="YubiKey"))[0] == 200
    mark = site.mark()
    assert await site.step_up(key) == (401, {"error": "Your security key did not verify you (PIN or fingerprint), "
                                                      "and this page needs that. Use a key that can, or a passkey."})
    fp = webauthn_fingerprint(key.credentials[0].id)
    assert site.since(mark) == [("webauthn_failed", "alice",
                                 f"step-up: user verification needed for this level; key {fp}")]
    assert await site.step_up(key, rd=MFA_RD) == (200, {"redirect": MFA_RD})
    assert (await site.userinfo())["level"] == "mfa"


async def test_a_counter_that_goes_back_locks_the_key(site):
    await site.sign_in()
    key = SoftAuthenticator()
    await site.register(key)
    assert (await site.step_up(key, counter=10))[0] == 200
    mark = site.mark()
    assert await site.step_up(key, counter=3, again=True) == (403, {"error": "This security key or passkey is now locked: its "
                                                                 "use counter went backwards, which can mean it was "
                                                                 "copied. Ask an administrator."})
    fp = webauthn_fingerprint(key.credentials[0].id)
    assert site.since(mark) == [("webauthn_locked", "alice", "step-up: signature counter did not increase (possible "
                                                             f"cloned authenticator) (10 -> 3); key {fp}")]
    page = await site.page("/oauth2/webauthn")
    assert "Locked: signature counter went from 10 to 3: possible cloned authenticator. Ask an administrator." in page


async def test_failed_keys_count_like_failed_passwords(site):
    await site.sign_in()
    key = SoftAuthenticator()
    await site.register(key)
    for _ in range(3):  # max_failures: 3
        assert (await site.step_up(key, bad_signature=True))[0] == 401
    st, body = await site.step_up(key)  # stopped at the options already
    assert (st, body) == (429, {"error": "Too many failed attempts. Try again in 15 minutes."})
    # The same ban as the password's: the user is banned, whatever the factor.
    r = await site.client.get("/oauth2/sign_in?" + urlencode({"rd": HW_RD}))
    fields = hidden_fields(await r.text())
    r = await site.client.post("/oauth2/sign_in", data=urlencode({**fields, "username": "alice",
                                                                  "password": "correct-horse-battery"}),
                               headers={"Content-Type": "application/x-www-form-urlencoded"}, allow_redirects=False)
    assert r.status == 429


async def test_an_upstream_session_steps_up_with_a_key(site):
    """A session from the upstream provider (source oidc): its keys belong to "oidc:<sub>"."""
    now = time.time()
    s = site.rt.codec.new("3f9a-Upstream", "password", now, email="u@example.com", groups=("staff",), source="oidc")
    site.client.session.cookie_jar.update_cookies({"fa": site.rt.codec.seal(s)}, site.client.make_url("/"))
    key = SoftAuthenticator()
    assert (await site.register(key))[0] == 200
    assert [c.user for c in await site.store.webauthn_credentials("oidc:3f9a-Upstream")] == ["oidc:3f9a-Upstream"]
    assert await site.step_up(key) == (200, {"redirect": HW_RD})
    info = await site.userinfo()
    assert (info["user"], info["level"], info["source"]) == ("3f9a-Upstream", "hardware", "oidc")
    # Its key does not sign in on its own: the account is the provider's.
    site.client.session.cookie_jar.clear()
    assert await site.passkey_sign_in(key) == (403, {"error": "This passkey cannot sign in here on its own: sign in "
                                                              "another way, then use it."})


async def test_a_state_store_outage_is_a_503_never_a_500(site, monkeypatch):
    from forwardauth.state.base import StoreUnavailable

    await site.sign_in()
    csrf = _csrf(await site.page("/oauth2/webauthn"))

    async def down(*args, **kw):
        raise StoreUnavailable("redis unreachable (ConnectionError)")

    monkeypatch.setattr(site.store, "webauthn_credentials", down)
    mark = site.mark()
    r = await site.client.post("/oauth2/webauthn/register/options", json={"csrf": csrf}, allow_redirects=False)
    assert (r.status, r.headers["Retry-After"], await r.json()) == (503, "5", {
        "error": "Your security key cannot be checked right now (forwardauth's state store cannot be reached). "
                 "Please try again in a minute."})
    assert site.since(mark) == [("webauthn_failed", "alice", "state store unavailable")]
    assert "forwardauth&#39;s state store cannot be reached" in await site.page("/oauth2/webauthn", 503)
    assert "forwardauth&#39;s state store cannot be reached" in await site.page(
        "/oauth2/webauthn/step_up?" + urlencode({"rd": HW_RD}), 503)
