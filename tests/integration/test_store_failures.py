"""The state store failing under the pages and the API: a clear 503 (page or
JSON) and an audit line for each attempt, never a 500; sign-out clears the
cookie in every case and says plainly when the revocation was not recorded.

Issue 14: POST /oauth2/sign_in, the TOTP pages and the step-up /oauth2/start
raised StoreUnavailable out of the regulation check (500, no audit line), and
sign-out answered 500, kept the cookie, and left the session valid.

The real app and a real SQLite file; `Breakable` makes every call of the
store fail as the SQLite store reports a failing disk.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_local_signin import ADMIN_RD, CONFIG, PASSWORD, RD, SECRET, Site, hidden_fields, human

from forwardauth.composition import build_app, parse_config
from forwardauth.core.runtime import Runtime
from forwardauth.signin.totp import SecretBox, code_at, current_step
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.web.context import CTX

TITLE = "Please try again in a moment"
MESSAGE = ("This service cannot reach its data store right now, so it could not do what you asked. "
           "Nothing was changed. Please try again in a few seconds.")
REASON = "state store unavailable"


class Breakable(SQLiteStore):
    """A real SQLite store whose every call fails while `down` is set."""

    down = False

    def _call(self, fn):
        if self.down:
            raise StoreUnavailable(f"sqlite state {self.path}: OperationalError: disk I/O error")
        return super()._call(fn)


@pytest.fixture
async def site(tmp_path):
    audit = tmp_path / "audit.log"
    extra = "tokens: {}\n"
    cfg = parse_config(CONFIG.format(db=tmp_path / "state.db", audit=audit, extra=extra), "test.yaml")
    rt = Runtime.build(cfg)
    store = Breakable(str(tmp_path / "state.db"))
    await store.open()
    for a in (human("alice"), human("carol", totp_secret_enc=SecretBox(rt.keyring).seal("carol", SECRET))):
        await store.add_account(a)
    client = TestClient(TestServer(build_app(rt, store), host="127.0.0.1"))
    await client.start_server()
    s = Site(client, audit, store, rt)
    yield s
    store.down = False
    await client.close()


async def unavailable_page(r) -> None:
    text = await r.text()
    assert r.status == 503, (r.status, text[:300])
    assert (r.headers["Retry-After"], r.headers["Content-Type"]) == ("5", "text/html; charset=utf-8")
    assert r.headers["Cache-Control"] == "no-store"
    assert f">{TITLE}</h1>" in text and MESSAGE in text


async def test_sign_in_post_with_the_store_down_is_a_503_page_and_an_audit_line(site):
    fields = await site.form("/oauth2/sign_in?" + urlencode({"rd": RD}))
    for username, password in (("alice", PASSWORD), ("alice", "wrong-password"), ("ghost", "x" * 12)):
        site.store.down = True
        mark = site.mark()
        r = await site.post("/oauth2/sign_in", {**fields, "username": username, "password": password})
        await unavailable_page(r)
        assert not any(c.startswith("fa=") for c in r.headers.getall("Set-Cookie", []))
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["reason"], line["host"]) == (
            "signin_refused", None, REASON, "app.example.com")
    site.store.down = False  # recovers by itself
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": PASSWORD})
    assert r.status == 303 and r.headers["Location"] == RD


async def test_totp_pages_with_the_store_down_are_503_pages(site):
    r = await site.sign_in(username="carol", rd=ADMIN_RD)
    assert r.status == 303
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    site.store.down = True
    for path in ("/oauth2/totp", "/oauth2/step_up", "/oauth2/totp/enroll"):
        await unavailable_page(await site.client.get(path + "?" + urlencode({"rd": ADMIN_RD}),
                                                     allow_redirects=False))
    # the step-up /oauth2/start asks the store whether carol has TOTP
    await unavailable_page(await site.client.get("/oauth2/start?" + urlencode({"rd": ADMIN_RD}),
                                                 allow_redirects=False))
    mark = site.mark()
    code = code_at(SECRET, current_step(time.time()))
    r = await site.post("/oauth2/totp", {**fields, "code": code})
    await unavailable_page(r)
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["level"], line["reason"]) == ("totp_failed", "carol", "mfa", REASON)
    site.store.down = False
    r = await site.post("/oauth2/totp", {**fields, "code": code})
    assert r.status == 303 and r.headers["Location"] == ADMIN_RD


async def test_enrolment_with_the_store_down_is_a_503_page_and_an_audit_line(site):
    assert (await site.sign_in(username="alice", rd=ADMIN_RD)).status == 303
    page = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD, "level": "mfa"}))
    text = await page.text()
    secret = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', text).group(1).replace(" ", "")
    fields = hidden_fields(text)
    site.store.down = True
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": code_at(secret, current_step(time.time()))})
    await unavailable_page(r)
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "alice", REASON)


async def test_sign_out_with_the_store_down_clears_the_cookie_and_says_it_was_not_recorded(site):
    assert (await site.sign_in(username="alice")).status == 303
    assert (await site.userinfo())["user"] == "alice"
    ctx = site.client.server.app[CTX]
    session = ctx.runtime.codec.open(site.client.session.cookie_jar.filter_cookies(
        site.client.make_url("/"))["fa"].value, time.time()).session
    site.store.down = True
    mark = site.mark()
    r = await site.client.get("/oauth2/sign_out?" + urlencode({"rd": RD}), allow_redirects=False)
    text = await r.text()
    assert r.status == 503 and r.headers["Retry-After"] == "60"
    assert ">Signed out in this browser only</h1>" in text
    assert "could not record the sign-out just now" in text and "sign out again in a minute" in text
    assert r.headers["Set-Cookie"] == "fa=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == (
        "signout", "alice", "local; revocation not recorded: state store unavailable")
    # This process refuses the session at once (a copy of the cookie), and records
    # the revocation with the first refresh that reaches the store.
    assert ctx.revocations.is_revoked("alice", session.sid, session.iat)
    site.store.down = False
    assert await ctx.revocations.refresh(site.store)
    assert session.sid in (await site.store.revocations(time.time())).revoked
    assert ctx.revocations.pending == {}


async def test_sign_out_with_the_store_up_still_redirects(site):
    assert (await site.sign_in(username="alice")).status == 303
    r = await site.client.get("/oauth2/sign_out?" + urlencode({"rd": RD}), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == RD
    assert r.headers["Set-Cookie"] == "fa=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"


async def test_token_exchange_with_the_store_down_is_a_503_json_and_an_audit_line(site):
    site.store.down = True
    mark = site.mark()
    r = await site.client.post("/api/v1/token", json={"username": "alice", "password": PASSWORD})
    assert (r.status, r.headers["Retry-After"]) == (503, "5")
    assert await r.json() == {"error": "unavailable", "error_description": "the state store is unavailable"}
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("signin_refused", None, f"token exchange: {REASON}")


async def test_a_page_asked_for_json_gets_json(site):
    fields = await site.form("/oauth2/sign_in?" + urlencode({"rd": RD}))
    site.store.down = True
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": PASSWORD},
                        headers={"Accept": "application/json"})
    assert (r.status, r.headers["Retry-After"]) == (503, "5")
    assert await r.json() == {"error": "temporarily_unavailable", "error_description": (
        "the state store is unavailable; nothing was changed; try again in a few seconds")}
