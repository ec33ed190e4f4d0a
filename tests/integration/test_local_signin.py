"""Local sign-in over HTTP: every bad input gets its exact answer and an audit line.

The real aiohttp app (build_app with the sign-in part), a real SQLite state
file and a real audit file; requests through aiohttp's test client, which
keeps cookies like a browser and is told not to follow redirects.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app, parse_config
from forwardauth.core.runtime import Runtime
from forwardauth.services.passwords import ScryptParams, hash_password
from forwardauth.signin.totp import SecretBox, code_at, current_step
from forwardauth.state.records import Account
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.web.context import CTX

FAST = ScryptParams(log_n=10)
PASSWORD = "correct-horse-battery"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
RD = "https://app.example.com/x?q=1"
ADMIN_RD = "https://app.example.com/admin/panel"
HTML = "text/html; charset=utf-8"

MSG_WRONG = "Wrong username or password."
MSG_LOCKED = "This account is locked. Ask an administrator to unlock it."
MSG_CSRF = "This form has expired or was not sent from this site. Please try again."
MSG_MALFORMED = "The form could not be read. Please try again."
MSG_TOO_LARGE = "The form is too large."
MSG_TOO_LONG = "The username or password is too long."
MSG_EMPTY = "Enter your username and password."
MSG_CODE_FORMAT = "Enter the 6-digit code from your authenticator app."
MSG_CODE_WRONG = "That code is not right. Check that your phone&#39;s clock is correct and try the next code."
MSG_CODE_REPLAYED = "That code has already been used. Wait for the next code (a new one appears every 30 seconds)."
MSG_SESSION_ENDED = "Your session has ended. Please sign in again."
MSG_LEVEL_FIRST = "Sign in with your password first, then come back to this step."
MSG_ENROL_BUSY = ("An authenticator app is being set up for this account in another window. "
                  "Finish it there, or start again here in a minute.")

CONFIG = """
server:
  listen: 127.0.0.1:4180
  public_url: https://auth.example.com
  trusted_proxies: [127.0.0.1/32]
  allowed_redirect_domains: [.example.com]
session: {{cookie_name: fa, secure: false, lifetime: 1h, idle_timeout: 10m}}
keys:
  inline: [{{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}}]
state: sqlite://{db}
levels:
  - {{name: password, acr: ["urn:acr:pwd"]}}
  - {{name: mfa, acr: ["urn:acr:mfa"], local_factor: totp}}
local:
  scrypt: {{log_n: 10}}
  regulation: {{max_failures: 3, max_client_failures: 50, window: 10m, ban_time: 15m}}
  audit: {audit}
  totp: {{issuer: Example}}
{extra}
policy:
  rules:
    - {{hosts: [app.example.com], paths: [/admin/], level: mfa}}
    - {{hosts: [app.example.com], paths: [/closed/], deny: true}}
    - {{hosts: [app.example.com], level: password}}
"""


class Site:
    """A test client plus the audit file and the store behind the app."""

    def __init__(self, client: TestClient, audit: Path, store: SQLiteStore, rt: Runtime):
        self.client, self.audit_path, self.store, self.rt = client, audit, store, rt

    def audit(self) -> list[dict]:
        log = self.client.server.app[CTX].audit
        if log is not None:
            assert log.flush(), "audit lines still queued after 5 s"
        if not self.audit_path.exists():
            return []
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()]

    def last(self) -> dict:
        lines = self.audit()
        assert lines, "no audit line written"
        return lines[-1]

    def mark(self) -> int:
        """How many audit lines there are now (for `one_new_line`)."""
        return len(self.audit())

    def one_new_line(self, mark: int) -> dict:
        """The single audit line written since `mark`; fails when there is none or more than one."""
        new = self.audit()[mark:]
        assert len(new) == 1, new
        return new[0]

    def text(self) -> str:
        self.audit()  # flushed
        return self.audit_path.read_text()

    async def form(self, path: str) -> dict[str, str]:
        """GET a page and return its hidden form fields (csrf, rd, level, pending)."""
        r = await self.client.get(path, allow_redirects=False)
        assert r.status == 200, (r.status, await r.text())
        return hidden_fields(await r.text())

    async def post(self, path: str, data: dict | str | bytes, **kw):
        headers = kw.pop("headers", {})
        if isinstance(data, dict):
            data = urlencode(data)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return await self.client.post(path, data=data, headers=headers, allow_redirects=False, **kw)

    async def sign_in(self, username: str = "alice", password: str = PASSWORD, rd: str = RD, **kw):
        fields = await self.form("/oauth2/sign_in?" + urlencode({"rd": rd}))
        return await self.post("/oauth2/sign_in", {**fields, "username": username, "password": password}, **kw)

    async def userinfo(self) -> dict | None:
        r = await self.client.get("/oauth2/userinfo")
        return await r.json() if r.status == 200 else None


def hidden_fields(page: str) -> dict[str, str]:
    return {m.group(1): html.unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page)}


def error_of(page: str) -> str | None:
    m = re.search(r'<p class="notice error" role="alert" id="error">(.*?)</p>', page)
    return m.group(1) if m else None


async def make_site(tmp_path: Path, extra: str = "", accounts: tuple[Account, ...] = ()):
    audit = tmp_path / "audit.log"
    cfg = parse_config(CONFIG.format(db=tmp_path / "state.db", audit=audit, extra=extra), "test.yaml")
    rt = Runtime.build(cfg)
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    for a in accounts:
        await store.add_account(a)
    client = TestClient(TestServer(build_app(rt, store), host="127.0.0.1"))
    await client.start_server()
    return Site(client, audit, store, rt)


def human(name: str = "alice", **kw) -> Account:
    now = time.time()
    return Account(name, display_name=name.title(), email=f"{name}@example.com", groups=("staff",),
                   password_hash=hash_password(PASSWORD, FAST), created=now, updated=now, **kw)


@pytest.fixture
async def site(tmp_path):
    box_ring = Runtime.build(parse_config(CONFIG.format(db=tmp_path / "x.db", audit="stdout", extra=""))).keyring
    carol_totp = SecretBox(box_ring).seal("carol", SECRET)
    s = await make_site(tmp_path, accounts=(
        human("alice"),
        human("locked", status="locked"),
        human("carol", totp_secret_enc=carol_totp),
        Account("robot", kind="system", groups=("bots",), created=1, updated=1),
    ))
    yield s
    await s.client.close()


# --- password sign-in ------------------------------------------------------------


async def test_sign_in_page_is_clean_and_protected(site):
    r = await site.client.get("/oauth2/sign_in?" + urlencode({"rd": RD}))
    assert r.status == 200 and r.headers["Content-Type"] == HTML
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Security-Policy"] == ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                                    "base-uri 'none'; frame-ancestors 'none'")
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Referrer-Policy"] == "no-referrer"
    page = await r.text()
    assert '<label for="username">Username</label>' in page and '<label for="password">Password</label>' in page
    assert "<script" not in page and "style=" not in page
    assert "to continue to <strong>app.example.com</strong>" in page
    cookie = r.headers["Set-Cookie"]
    assert re.fullmatch(r"fa-csrf=[A-Za-z0-9_-]{32}; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict", cookie)
    css = await site.client.get("/oauth2/static/forwardauth.css")
    assert css.status == 200 and css.headers["Content-Type"] == "text/css; charset=utf-8"


async def test_sign_in_ok_sets_the_session_and_goes_to_rd(site):
    mark = site.mark()
    r = await site.sign_in(headers={"X-Forwarded-For": "203.0.113.9", "X-Request-Id": "req-1"})
    assert r.status == 303 and r.headers["Location"] == RD
    assert any(c.startswith("fa=") for c in r.headers.getall("Set-Cookie"))
    assert await site.userinfo() == {**(await site.userinfo()), "user": "alice", "level": "password",
                                      "groups": ["staff"], "email": "alice@example.com", "source": "local"}
    line = site.one_new_line(mark)
    assert line["event"] == "signin_ok" and line["user"] == "alice" and line["level"] == "password"
    assert (line["client"], line["host"], line["path"], line["request_id"]) == (
        "203.0.113.9", "app.example.com", "/x", "req-1")
    assert PASSWORD not in site.audit_path.read_text()


async def test_username_is_case_insensitive(site):
    r = await site.sign_in(username="  ALICE ")
    assert r.status == 303


async def test_wrong_password_and_unknown_user_read_the_same(site):
    mark = site.mark()
    wrong = await site.sign_in(password="not-the-password")
    unknown = await site.sign_in(username="mallory", password="not-the-password")
    assert wrong.status == unknown.status == 401
    assert wrong.headers["Content-Type"] == unknown.headers["Content-Type"] == HTML
    assert error_of(await wrong.text()) == error_of(await unknown.text()) == MSG_WRONG
    a, b = site.audit()[mark:]
    assert (a["event"], a["user"], a["reason"]) == ("signin_failed", "alice", "wrong_password")
    # an unknown name may be a password typed into the wrong box: it is not written down
    assert (b["event"], b["user"], b["reason"]) == ("signin_failed", None, "unknown_user")
    assert "mallory" not in site.audit_path.read_text() and "not-the-password" not in site.audit_path.read_text()
    assert await site.userinfo() is None


async def test_system_account_cannot_sign_in_with_a_password(site):
    mark = site.mark()
    r = await site.sign_in(username="robot", password=PASSWORD)
    assert r.status == 401 and error_of(await r.text()) == MSG_WRONG
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("signin_failed", "robot", "system_account")


async def test_locked_account(site):
    mark = site.mark()
    r = await site.sign_in(username="locked")
    assert r.status == 403 and error_of(await r.text()) == MSG_LOCKED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("signin_refused", "locked", "locked")
    mark = site.mark()
    r = await site.sign_in(username="locked", password="wrong-one")
    assert r.status == 401 and error_of(await r.text()) == MSG_WRONG  # the lock is told only to the owner
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("signin_failed", "locked", "wrong_password")
    assert await site.userinfo() is None


async def test_banned_after_three_failures_same_for_unknown_users(site):
    for name in ("alice", "ghost"):
        statuses = []
        for _ in range(3):
            mark = site.mark()
            r = await site.sign_in(username=name, password="bad-password")
            statuses.append(r.status)
            line = site.one_new_line(mark)
        assert statuses == [401, 401, 429]
        assert r.headers["Retry-After"] == "901"
        reason = "wrong_password" if name == "alice" else "unknown_user"
        assert (line["event"], line["reason"]) == ("signin_failed", f"{reason}; ban started")
        assert error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
        # the right password does not help while banned (and is not even checked)
        mark = site.mark()
        r = await site.sign_in(username=name, password=PASSWORD)
        assert r.status == 429 and error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
        assert 890 <= int(r.headers["Retry-After"]) <= 901
        line = site.one_new_line(mark)
        assert (line["event"], line["reason"]) == ("signin_refused", "banned")
    assert (await site.sign_in(username="carol")).status == 303  # others are not affected


async def test_missing_and_wrong_csrf_token(site):
    fields = await site.form("/oauth2/sign_in")
    no_token = {k: v for k, v in fields.items() if k != "csrf"}
    for data in ({**no_token, "username": "alice", "password": PASSWORD},
                 {**fields, "csrf": fields["csrf"][:-2] + "xx", "username": "alice", "password": PASSWORD},
                 {**fields, "csrf": "", "username": "alice", "password": PASSWORD}):
        mark = site.mark()
        r = await site.post("/oauth2/sign_in", data)
        assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["reason"]) == ("signin_refused", None, "csrf")
    # a valid token without its cookie (another browser) is refused too
    site.client.session.cookie_jar.clear()
    mark = site.mark()
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": PASSWORD})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("signin_refused", "csrf")
    assert await site.userinfo() is None


async def test_oversized_form(site):
    fields = await site.form("/oauth2/sign_in")
    for size in (9000, 200_000):
        mark = site.mark()
        r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": "x" * size})
        assert r.status == 413 and error_of(await r.text()) == MSG_TOO_LARGE
        line = site.one_new_line(mark)
        assert (line["event"], line["reason"]) == ("signin_failed", "oversized_form")


async def test_oversized_fields(site):
    fields = await site.form("/oauth2/sign_in")
    for user, pw in (("a" * 129, PASSWORD), ("alice", "p" * 1025)):
        mark = site.mark()
        r = await site.post("/oauth2/sign_in", {**fields, "username": user, "password": pw})
        assert r.status == 400 and error_of(await r.text()) == MSG_TOO_LONG
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["reason"]) == ("signin_failed", None, "oversized_field")


@pytest.mark.parametrize("body, ctype", [
    ("username=alice&password=%ff%fe", "application/x-www-form-urlencoded"),  # not UTF-8
    ("username=alice&username=bob&password=x", "application/x-www-form-urlencoded"),  # repeated field
    ("&".join(f"f{i}=1" for i in range(40)), "application/x-www-form-urlencoded"),  # too many fields
    ("username=alice&password=a%00b", "application/x-www-form-urlencoded"),  # NUL
    ('{"username": "alice", "password": "x"}', "application/json"),
    ("username=alice&password=x", "text/plain"),
    ("username=alice&password", "application/x-www-form-urlencoded"),  # no '='
])
async def test_malformed_forms(site, body, ctype):
    fields = await site.form("/oauth2/sign_in")
    prefix = urlencode({"csrf": fields["csrf"]}) + "&" if ctype.startswith("application/x-www") else ""
    mark = site.mark()
    r = await site.post("/oauth2/sign_in", prefix + body, headers={"Content-Type": ctype})
    assert r.status == 400 and error_of(await r.text()) == MSG_MALFORMED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("signin_failed", None, "malformed_form")


async def test_missing_fields_and_empty_values(site):
    fields = await site.form("/oauth2/sign_in")
    mark = site.mark()
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice"})
    assert r.status == 400 and error_of(await r.text()) == MSG_MALFORMED
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("signin_failed", "malformed_form")
    mark = site.mark()
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": ""})
    assert r.status == 400 and error_of(await r.text()) == MSG_EMPTY
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("signin_failed", "empty_field")


async def test_open_redirect_in_the_form_is_replaced(site):
    fields = await site.form("/oauth2/sign_in")
    r = await site.post("/oauth2/sign_in", {**fields, "rd": "https://evil.test/", "username": "alice",
                                            "password": PASSWORD})
    assert r.status == 303 and r.headers["Location"] == "https://auth.example.com/"
    fields = await site.form("/oauth2/sign_in?rd=//evil.test/")
    assert fields["rd"] == "https://auth.example.com/"


# --- /oauth2/start and the TOTP step-up ---------------------------------------------------


async def test_start_without_session_goes_to_the_sign_in_page(site):
    r = await site.client.get("/oauth2/start?" + urlencode({"rd": ADMIN_RD}), allow_redirects=False)
    assert r.status == 302
    loc = urlsplit(r.headers["Location"])
    assert loc.path == "/oauth2/sign_in"
    assert parse_qs(loc.query) == {"rd": [ADMIN_RD], "level": ["mfa"]}


async def test_password_then_totp_for_an_mfa_page(site):
    fields = await site.form("/oauth2/sign_in?" + urlencode({"rd": ADMIN_RD, "level": "mfa"}))
    r = await site.post("/oauth2/sign_in", {**fields, "username": "carol", "password": PASSWORD})
    assert r.status == 303  # password proves "password"; the mfa page needs the next step
    assert r.headers["Location"] == "/oauth2/start?" + urlencode({"rd": ADMIN_RD, "level": "mfa"})
    r = await site.client.get(r.headers["Location"], allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/oauth2/totp?" + urlencode({"rd": ADMIN_RD, "level": "mfa"})
    fields = await site.form(r.headers["Location"])
    code = code_at(SECRET, current_step(time.time()))
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "code": code[:3] + " " + code[3:]})
    assert r.status == 303 and r.headers["Location"] == ADMIN_RD
    info = await site.userinfo()
    assert info["level"] == "mfa" and set(info["proven"]) == {"password", "mfa"}
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["level"], line["reason"], line["path"]) == (
        "step_up", "carol", "mfa", "totp", "/admin/panel")
    # the same code again (say, from a second tab) is refused
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "code": code})
    assert r.status == 401 and error_of(await r.text()) == MSG_CODE_REPLAYED
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("totp_failed", "replayed")
    assert code not in site.audit_path.read_text().replace(site.audit()[0]["time"], "")


async def totp_fields(site, user: str = "carol") -> dict[str, str]:
    assert (await site.sign_in(username=user)).status == 303
    return await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))


def wrong_code(secret: str) -> str:
    step = current_step(time.time())
    window = {code_at(secret, s) for s in (step - 1, step, step + 1, step + 2)}
    return next(c for c in (f"{i:06d}" for i in range(1000)) if c not in window)


async def test_totp_bad_inputs(site):
    fields = await totp_fields(site)
    wrong = wrong_code(SECRET)
    cases = [  # (form, status, message, audit reason); none counts as a failure except the wrong code
        ({**fields, "code": "12345"}, 400, MSG_CODE_FORMAT, "malformed_code"),
        ({**fields, "code": "12x456"}, 400, MSG_CODE_FORMAT, "malformed_code"),
        ({**fields, "code": "1234567"}, 400, MSG_CODE_FORMAT, "malformed_code"),
        (dict(fields), 400, MSG_CODE_FORMAT, "malformed_form"),
        ({**fields, "code": wrong}, 401, MSG_CODE_WRONG, "wrong_code"),
        ({**fields, "csrf": "k1.AAAA", "code": wrong}, 403, MSG_CSRF, "csrf"),
        ({k: v for k, v in fields.items() if k != "csrf"} | {"code": wrong}, 403, MSG_CSRF, "csrf"),
    ]
    for data, status, message, reason in cases:
        mark = site.mark()
        r = await site.post("/oauth2/totp", data)
        assert (r.status, error_of(await r.text())) == (status, message), data
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["level"], line["reason"], line["path"]) == (
            "totp_failed", "carol", "mfa", reason, "/admin/panel")
    # a token made for the sign-in form does not work here (bound to form and session)
    signin_fields = await site.form("/oauth2/sign_in")
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "csrf": signin_fields["csrf"], "code": wrong})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("totp_failed", "csrf")
    # two more wrong codes: banned, like passwords
    await site.post("/oauth2/totp", {**fields, "code": wrong})
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "code": wrong})
    assert r.status == 429 and error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
    assert r.headers["Retry-After"] == "901"
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("totp_failed", "wrong_code; ban started")
    # and now even the right code is refused, unchecked
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 429 and error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("totp_failed", "banned")
    assert (await site.userinfo())["level"] == "password"


@pytest.mark.parametrize("body, status, message", [
    ("code=" + "1" * 9000, 413, MSG_TOO_LARGE),
    ("code=1&code=2", 400, MSG_MALFORMED),
    ("code=%ff%fe", 400, MSG_MALFORMED),
    ("code=12%003456", 400, MSG_MALFORMED),
    ("rd=" + "x" * 4097 + "&code=123456", 400, MSG_MALFORMED),
])
async def test_totp_oversized_and_malformed_forms(site, body, status, message):
    await totp_fields(site)
    mark = site.mark()
    r = await site.post("/oauth2/totp", body)
    assert (r.status, error_of(await r.text())) == (status, message)
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == (
        "totp_failed", "carol", "oversized_form" if status == 413 else "malformed_form")
    assert (await site.userinfo())["level"] == "password"


async def test_totp_without_a_session(site):
    fields = await site.form("/oauth2/sign_in")
    mark = site.mark()
    r = await site.post("/oauth2/totp", {"csrf": fields["csrf"], "code": "123456", "rd": ADMIN_RD})
    assert r.status == 401 and error_of(await r.text()) == MSG_SESSION_ENDED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", None, "no_session")
    # the same for the set-up form
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {"csrf": fields["csrf"], "code": "123456", "pending": "x",
                                                "rd": ADMIN_RD})
    assert r.status == 401 and error_of(await r.text()) == MSG_SESSION_ENDED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", None, "no_session")
    r = await site.client.get("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"].startswith("/oauth2/start?")


async def test_enrolment_from_the_explanation_page(site):
    await site.sign_in(username="alice")
    r = await site.client.get("/oauth2/start?" + urlencode({"rd": ADMIN_RD}), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/oauth2/step_up?" + urlencode({"rd": ADMIN_RD,
                                                                                         "level": "mfa"})
    r = await site.client.get(r.headers["Location"])
    page = await r.text()
    assert r.status == 200 and "This page needs a stronger sign-in" in page
    assert "app.example.com/admin/panel needs two-step sign-in." in page
    assert 'href="/oauth2/totp/enroll?rd=https%3A%2F%2Fapp.example.com%2Fadmin%2Fpanel&amp;level=mfa"' in page
    r = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD, "level": "mfa"}))
    page = await r.text()
    assert r.status == 200 and "<svg" in page and "<script" not in page
    secret = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', page).group(1).replace(" ", "")
    fields = hidden_fields(page)
    assert secret not in fields["pending"]
    # a wrong first code keeps the same secret on the page
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": wrong_code(secret)})
    assert r.status == 401 and error_of(await r.text()) == MSG_CODE_WRONG
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "alice", "wrong_code")
    assert secret.replace(" ", "") in (await r.text()).replace(" ", "")
    code = code_at(secret, current_step(time.time()))
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": code})
    assert r.status == 303 and r.headers["Location"] == ADMIN_RD
    assert (await site.userinfo())["level"] == "mfa"
    events = [(x["event"], x["user"], x["level"]) for x in site.audit()[mark:]]
    assert events == [("totp_enrolled", "alice", "mfa"), ("step_up", "alice", "mfa")]
    acct = await site.store.get_account("alice")
    assert acct.has_totp and secret not in acct.totp_secret_enc
    # the old form is dead (its token was bound to the session before the step-up)...
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": code})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    # ...and enrolment is not offered again: the code page is
    r = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/oauth2/totp?" + urlencode({"rd": ADMIN_RD,
                                                                                      "level": "mfa"})
    assert secret not in site.audit_path.read_text()


MSG_ENROL_EXPIRED = "This set-up page has expired. Please start again."


async def enrol_page(site, user: str = "alice") -> tuple[dict[str, str], str]:
    """Signed in as `user` with a password: the enrolment form's hidden fields and the secret shown."""
    if user not in ("alice",):
        await site.store.add_account(human(user))
    assert (await site.sign_in(username=user)).status == 303
    r = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}))
    page = await r.text()
    assert r.status == 200, page
    secret = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', page).group(1).replace(" ", "")
    return hidden_fields(page), secret


async def test_enrolment_bad_inputs(site):
    fields, secret = await enrol_page(site)
    wrong = wrong_code(secret)
    cases = [  # (form, status, message, audit reason)
        ({**fields, "pending": fields["pending"][:-3] + "abc", "code": "123456"}, 400, MSG_ENROL_EXPIRED,
         "enrolment_expired"),
        ({**fields, "pending": "", "code": "123456"}, 400, MSG_ENROL_EXPIRED, "enrolment_expired"),
        ({**fields, "code": "12x456"}, 400, MSG_CODE_FORMAT, "malformed_code"),
        ({**fields, "code": ""}, 400, MSG_CODE_FORMAT, "malformed_code"),
        ({**fields, "code": wrong}, 401, MSG_CODE_WRONG, "wrong_code"),
        ({k: v for k, v in fields.items() if k != "csrf"} | {"code": "1"}, 403, MSG_CSRF, "csrf"),
        ({**fields, "csrf": "k1.AAAA", "code": "123456"}, 403, MSG_CSRF, "csrf"),
        ({k: v for k, v in fields.items() if k != "pending"} | {"code": "123456"}, 400, MSG_MALFORMED,
         "malformed_form"),
        (dict(fields), 400, MSG_MALFORMED, "malformed_form"),
    ]
    for data, status, message, reason in cases:
        mark = site.mark()
        r = await site.post("/oauth2/totp/enroll", data)
        assert (r.status, error_of(await r.text())) == (status, message), data
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "alice", reason), data
    assert not (await site.store.get_account("alice")).has_totp
    assert (await site.userinfo())["level"] == "password"


@pytest.mark.parametrize("body, status, message", [
    ("code=" + "1" * 9000, 413, MSG_TOO_LARGE),
    ("code=1&code=2", 400, MSG_MALFORMED),
    ("pending=%ff&code=123456", 400, MSG_MALFORMED),
    ("pending=" + "p" * 4097 + "&code=123456", 400, MSG_MALFORMED),
    ("&".join(f"f{i}=1" for i in range(40)), 400, MSG_MALFORMED),
])
async def test_enrolment_oversized_and_malformed_forms(site, body, status, message):
    await enrol_page(site)
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", body)
    assert (r.status, error_of(await r.text())) == (status, message)
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == (
        "totp_failed", "alice", "oversized_form" if status == 413 else "malformed_form")
    assert not (await site.store.get_account("alice")).has_totp


async def test_sign_in_csrf_token_does_not_work_for_the_enrolment_form(site):
    fields, secret = await enrol_page(site)
    signin_fields = await site.form("/oauth2/sign_in")
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {**fields, "csrf": signin_fields["csrf"],
                                                "code": code_at(secret, current_step(time.time()))})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("totp_failed", "csrf")
    assert not (await site.store.get_account("alice")).has_totp


async def test_pending_secret_of_one_user_does_not_enrol_another(site):
    alice_fields, secret = await enrol_page(site)
    site.client.session.cookie_jar.clear()
    fields, _ = await enrol_page(site, "bob")
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {**fields, "pending": alice_fields["pending"],
                                                "code": code_at(secret, current_step(time.time()))})
    assert r.status == 400 and error_of(await r.text()) == MSG_ENROL_EXPIRED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "bob", "enrolment_expired")
    assert not (await site.store.get_account("bob")).has_totp
    assert not (await site.store.get_account("alice")).has_totp


async def test_locked_while_signed_in_cannot_step_up(site):
    await site.sign_in(username="carol")
    acct = await site.store.get_account("carol")
    await site.store.put_account(acct.changed(status="locked"))
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    mark = site.mark()
    r = await site.post("/oauth2/totp", {**fields, "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 403 and error_of(await r.text()) == MSG_LOCKED
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "carol", "locked")


async def test_decision_denied_is_audited(site):
    await site.sign_in(username="alice")
    cookie = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))["fa"].value
    mark = site.mark()
    r = await site.client.get("/auth/nginx", headers={"X-Original-URL": "https://app.example.com/closed/x?t=s3cr3t",
                                                      "X-Original-Method": "GET", "Cookie": f"fa={cookie}"})
    assert r.status == 403
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["host"], line["path"]) == ("decision_denied", "alice",
                                                                         "app.example.com", "/closed/x")
    assert "s3cr3t" not in site.audit_path.read_text()


async def test_home_page(site):
    r = await site.client.get("/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/oauth2/start?" + urlencode(
        {"rd": "https://auth.example.com/"})
    await site.sign_in(username="alice")
    r = await site.client.get("/")
    assert r.status == 200 and "You are signed in" in await r.text()


async def test_password_sign_in_off(tmp_path):
    s = await make_site(tmp_path, extra="  enabled: false")
    try:
        r = await s.client.get("/oauth2/sign_in")
        assert r.status == 404
        r = await s.client.get("/oauth2/start?" + urlencode({"rd": RD}), allow_redirects=False)
        assert r.status == 503  # no authenticator can prove "password" here
    finally:
        await s.client.close()


async def test_first_admin_is_created_once(tmp_path, capfd):
    extra = "  bootstrap_admin: {username: root, groups: [admins]}"
    s = await make_site(tmp_path, extra=extra)
    err = capfd.readouterr().err
    m = re.search(r"username: root\n    password: (\S+)\n", err)
    assert m, err
    try:
        assert (await s.sign_in(username="root", password=m.group(1))).status == 303
        assert (await s.userinfo())["groups"] == ["admins"]
        assert [x["event"] for x in s.audit()][:1] == ["account_created"]
        assert m.group(1) not in s.audit_path.read_text()
    finally:
        await s.client.close()
    s2 = await make_site(tmp_path, extra=extra)
    await s2.client.close()
    assert "password:" not in capfd.readouterr().err


async def test_sign_out_is_audited_and_ends_the_session(site):
    await site.sign_in(username="alice", headers={"X-Forwarded-For": "198.51.100.4"})
    mark = site.mark()
    r = await site.client.get("/oauth2/sign_out?rd=https://app.example.com/bye", allow_redirects=False,
                              headers={"X-Forwarded-For": "198.51.100.4", "X-Request-Id": "out-1"})
    assert r.status == 302 and r.headers["Location"] == "https://app.example.com/bye"
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["client"], line["level"], line["reason"], line["request_id"]) == (
        "signout", "alice", "198.51.100.4", "password", "local", "out-1")
    assert (line["host"], line["path"]) == (f"{site.client.host}:{site.client.port}", "/oauth2/sign_out")
    assert await site.userinfo() is None


# --- parallel requests ------------------------------------------------------------------


async def test_a_parallel_burst_of_passwords_gets_no_more_tries_than_the_limit(site):
    """40 wrong passwords and the right one, all at once (max_failures: 3): at most 3 are checked,
    every other answer is the ban, no session comes out of the burst unless the right password was
    among the first 3 checked, and afterwards the right password is refused too."""
    fields = await site.form("/oauth2/sign_in")

    async def one(pw: str):
        r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": pw})
        return r.status, error_of(await r.text()) if r.status != 303 else None

    mark = site.mark()
    answers = await asyncio.gather(*[one(f"wrong-{i}") for i in range(40)], one(PASSWORD))
    checked = [a for a in answers if a[0] != 429]
    assert len(checked) <= 3, answers
    assert all(a == (401, MSG_WRONG) for a in checked[:-1] if a[0] != 303)
    banned = "Too many failed attempts. Try again in 15 minutes."
    assert all(msg == banned for status, msg in answers if status == 429)
    lines = site.audit()[mark:]
    assert len(lines) == 41
    assert sum(1 for x in lines if x["reason"] in ("wrong_password", "wrong_password; ban started")) <= 3
    assert sum(1 for x in lines if x["event"] == "signin_ok") == sum(1 for a in answers if a[0] == 303) <= 1
    site.client.session.cookie_jar.clear()
    r = await site.sign_in(username="alice")
    assert r.status == 429 and error_of(await r.text()) == banned


def slow_store(site, delay: float = 0.05) -> None:
    """Account reads take `delay` (a store over the network): widens any check-then-act window."""
    real = site.store.get_account

    async def get_account(name):
        await asyncio.sleep(delay)
        return await real(name)

    site.store.get_account = get_account


async def test_a_parallel_burst_of_totp_codes_gets_no_more_tries_than_the_limit(site):
    """30 different wrong codes at once: at most 3 are looked at (audit reason wrong_code...)."""
    fields = await totp_fields(site)
    step = current_step(time.time())
    good = {code_at(SECRET, s) for s in (step - 1, step, step + 1, step + 2)}
    wrong = [c for c in (f"{i:06d}" for i in range(200)) if c not in good][:30]
    slow_store(site)
    mark = site.mark()
    rs = await asyncio.gather(*(site.post("/oauth2/totp", {**fields, "code": c}) for c in wrong))
    statuses = [r.status for r in rs]
    assert sum(1 for x in statuses if x == 401) <= 3 and all(x in (401, 429) for x in statuses), statuses
    lines = site.audit()[mark:]
    assert len(lines) == 30
    assert sum(1 for x in lines if x["reason"].startswith("wrong_code")) <= 3, lines
    r = await site.post("/oauth2/totp", {**fields, "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 429
    assert (await site.userinfo())["level"] == "password"


async def test_two_enrolments_at_once_only_one_wins(site):
    """Two tabs, two set-up pages with different secrets, both confirmed at once: one is stored, the
    other is told so (409), and the stored secret is the winner's."""
    await site.sign_in(username="alice")
    tabs = []
    for _ in range(2):
        page = await (await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}))).text()
        secret = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', page).group(1).replace(" ", "")
        tabs.append((hidden_fields(page), secret))
    assert tabs[0][1] != tabs[1][1]
    slow_store(site)
    step = current_step(time.time())
    mark = site.mark()
    rs = await asyncio.gather(*(site.post("/oauth2/totp/enroll", {**f, "code": code_at(sec, step)})
                                for f, sec in tabs))
    statuses = sorted(r.status for r in rs)
    assert statuses == [303, 409], statuses
    winner = next(sec for (f, sec), r in zip(tabs, rs, strict=True) if r.status == 303)
    loser = next(r for r in rs if r.status == 409)
    assert error_of(await loser.text()) in (MSG_ENROL_BUSY, None)
    if error_of(await loser.text()) is None:
        assert "An authenticator app is already set up for this account." in await loser.text()
    acct = await site.store.get_account("alice")
    assert SecretBox(site.rt.keyring).open("alice", acct.totp_secret_enc) == winner
    events = sorted((x["event"], x["reason"]) for x in site.audit()[mark:])
    assert events[0] == ("step_up", "totp") and events[-1] == ("totp_failed", events[-1][1])
    assert events[-1][1] in ("enrolment_busy", "already_enrolled")
    assert len(events) == 3  # totp_enrolled + step_up for the winner, totp_failed for the other


# --- a factor adds one level, it does not skip any -----------------------------------------

SKIP_CONFIG_LEVELS = ('  - {{name: basic, acr: ["urn:acr:basic"]}}\n'
                      '  - {{name: password, acr: ["urn:acr:pwd"]}}\n')


@pytest.fixture
async def three_levels(tmp_path, monkeypatch):
    """basic < password < mfa (TOTP); a session from an upstream provider at "basic"."""
    monkeypatch.setattr(__import__(__name__), "CONFIG", CONFIG.replace(
        '  - {{name: password, acr: ["urn:acr:pwd"]}}\n', SKIP_CONFIG_LEVELS).replace(
        "local:\n", "local:\n  password_level: password\n"), raising=True)
    box = SecretBox(Runtime.build(parse_config(CONFIG.format(db=tmp_path / "x.db", audit="stdout",
                                                                extra=""))).keyring)
    s = await make_site(tmp_path, accounts=(
        human("alice"),
        Account("oidc:eve", totp_secret_enc=box.seal("oidc:eve", SECRET), created=1, updated=1),
    ))
    now = time.time()
    basic = s.rt.codec.new("eve", "basic", now, proofs={"basic": now}, source="oidc")
    s.client.session.cookie_jar.update_cookies({"fa": s.rt.codec.seal(basic)})
    yield s
    await s.client.close()


async def test_a_basic_session_cannot_enrol_its_way_to_mfa(three_levels):
    site = three_levels
    await site.store.delete_account("oidc:eve")  # no TOTP yet: enrolment is what would be offered
    q = urlencode({"rd": ADMIN_RD, "level": "mfa"})
    for path in ("/oauth2/totp/enroll", "/oauth2/step_up", "/oauth2/totp"):
        r = await site.client.get(f"{path}?{q}", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/oauth2/start?" + q, path
    # a form made up by hand (the pending value is real: sealed for this account by the server's key)
    box = SecretBox(site.rt.keyring)
    pending = box.seal_pending("oidc:eve", SECRET, time.time())
    nonce_page = await site.form("/oauth2/sign_in")  # sets the CSRF nonce cookie
    del nonce_page
    from forwardauth.web import csrf as csrf_mod

    nonce = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))["fa-csrf"].value
    sid = site.rt.codec.open(site.client.session.cookie_jar.filter_cookies(
        site.client.make_url("/"))["fa"].value, time.time()).session.sid
    token = csrf_mod.Csrf(site.rt.keyring).token(nonce, "enroll", sid)
    mark = site.mark()
    r = await site.post("/oauth2/totp/enroll", {"csrf": token, "rd": ADMIN_RD, "level": "mfa", "pending": pending,
                                                "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 403 and error_of(await r.text()) == MSG_LEVEL_FIRST
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["level"], line["reason"]) == (
        "totp_failed", "eve", "mfa", "level_too_low (basic)")
    assert (await site.userinfo())["level"] == "basic"
    assert await site.store.get_account("oidc:eve") is None


async def test_a_basic_session_cannot_use_a_totp_code_for_mfa(three_levels):
    site = three_levels
    from forwardauth.web import csrf as csrf_mod

    await site.form("/oauth2/sign_in")  # the CSRF nonce cookie
    jar = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))
    sid = site.rt.codec.open(jar["fa"].value, time.time()).session.sid
    token = csrf_mod.Csrf(site.rt.keyring).token(jar["fa-csrf"].value, "totp", sid)
    mark = site.mark()
    r = await site.post("/oauth2/totp", {"csrf": token, "rd": ADMIN_RD, "level": "mfa",
                                         "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 403 and error_of(await r.text()) == MSG_LEVEL_FIRST
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["level"], line["reason"]) == (
        "totp_failed", "eve", "mfa", "level_too_low (basic)")
    assert (await site.userinfo())["level"] == "basic"
    # the code was not used up: it was never looked at
    assert (await site.store.get_account("oidc:eve")).totp_last_step == 0


async def test_a_post_for_a_level_no_code_proves_is_404_and_audited(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "CONFIG", CONFIG.replace(", local_factor: totp", ""))
    site = await make_site(tmp_path, accounts=(human("alice"),))
    try:
        await site.sign_in(username="alice")
        for path, form in (("/oauth2/totp", "totp"), ("/oauth2/totp/enroll", "enroll")):
            from forwardauth.web import csrf as csrf_mod

            jar = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))
            sid = site.rt.codec.open(jar["fa"].value, time.time()).session.sid
            token = csrf_mod.Csrf(site.rt.keyring).token(jar["fa-csrf"].value, form, sid)
            mark = site.mark()
            r = await site.post(path, {"csrf": token, "rd": ADMIN_RD, "level": "mfa", "pending": "x",
                                       "code": "123456"})
            assert r.status == 404 and "No level here is proven with a one-time code." in await r.text()
            line = site.one_new_line(mark)
            assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "alice", "no_totp_level")
    finally:
        await site.client.close()


# --- the audit file, end to end -------------------------------------------------------------


async def test_no_secret_reaches_the_audit_file(site):
    """Every password, code, TOTP secret, pending value, CSRF token, nonce and cookie used in a full
    round (good and bad) is searched for in the whole audit file."""
    used: set[str] = {PASSWORD, SECRET, "not-the-password", "Hunter2-typed-as-username"}
    await site.sign_in(username="alice", password="not-the-password")
    await site.sign_in(username="Hunter2-typed-as-username", password="x-password")
    fields, secret = await enrol_page(site)
    used |= {secret, fields["pending"], fields["csrf"]}
    wrong = wrong_code(secret)
    used.add(wrong)
    await site.post("/oauth2/totp/enroll", {**fields, "code": wrong})
    code = code_at(secret, current_step(time.time()))
    used.add(code)
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": code})
    assert r.status == 303
    site.client.session.cookie_jar.clear()
    await site.sign_in(username="carol")
    tf = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    used.add(tf["csrf"])
    carol_code = code_at(SECRET, current_step(time.time()))
    used.add(carol_code)
    assert (await site.post("/oauth2/totp", {**tf, "code": carol_code})).status == 303
    jar = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))
    used |= {jar["fa"].value, jar["fa-csrf"].value}
    await site.client.get("/auth/nginx", headers={"X-Original-URL": "https://app.example.com/closed/?t=1",
                                                  "X-Original-Method": "GET", "Cookie": f"fa={jar['fa'].value}"})
    await site.client.get("/oauth2/sign_out", allow_redirects=False)
    text = site.text()
    events = {x["event"] for x in site.audit()}
    assert {"signin_ok", "signin_failed", "totp_failed", "totp_enrolled", "step_up", "decision_denied",
            "signout"} <= events
    for value in used:
        # 6-digit codes could collide with digits of a timestamp: look for them as JSON values only
        needle = f'"{value}"' if value.isdigit() else value
        assert needle not in text, value
    assert "hunter2" not in text.lower()


async def test_decision_denied_carries_the_request_id(site):
    await site.sign_in(username="alice")
    cookie = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))["fa"].value
    mark = site.mark()
    r = await site.client.get("/auth/nginx", headers={"X-Original-URL": "https://app.example.com/closed/y",
                                                      "X-Original-Method": "GET", "Cookie": f"fa={cookie}",
                                                      "X-Request-Id": "rid-403"})
    assert r.status == 403
    line = site.one_new_line(mark)
    assert (line["event"], line["user"], line["path"], line["request_id"]) == (
        "decision_denied", "alice", "/closed/y", "rid-403")


async def test_an_audit_file_that_cannot_be_written_stops_the_start(tmp_path):
    from forwardauth.core.errors import ConfigError

    (tmp_path / "ro").mkdir()
    target = tmp_path / "ro" / "missing-dir" / "audit.log"
    cfg = parse_config(CONFIG.format(db=tmp_path / "state.db", audit=target, extra=""), "test.yaml")
    with pytest.raises(ConfigError) as err:
        build_app(Runtime.build(cfg), SQLiteStore(str(tmp_path / "state.db")))
    assert str(err.value) == (f"test.yaml: local.audit: cannot open the audit log {str(target)!r} for writing: "
                              "No such file or directory")


async def test_a_failing_audit_write_does_not_fail_the_decision(site, capfd, monkeypatch):
    """The audit file breaks after the start (say, the disk is full): 403s still answer 403, and
    the failure is reported once on stderr."""
    import errno

    import forwardauth.services.audit as audit_mod

    await site.sign_in(username="alice")
    cookie = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))["fa"].value
    log = site.client.server.app[CTX].audit

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod, "_write_fd", full)  # every write now fails
    for i in range(3):
        r = await site.client.get("/auth/nginx", headers={"X-Original-URL": f"https://app.example.com/closed/{i}",
                                                          "X-Original-Method": "GET", "Cookie": f"fa={cookie}"})
        assert r.status == 403
    assert log.flush()
    err = capfd.readouterr().err
    assert err.count("audit log") == 1 and "write failed" in err


# --- the pages -------------------------------------------------------------------------------


async def test_errors_are_tied_to_their_fields_and_notices_have_their_own_ids(site):
    r = await site.sign_in(password="not-the-password")
    page = await r.text()
    assert page.count('id="error"') == 1 and 'id="info"' not in page
    for field in ("username", "password"):
        tag = re.search(rf'<input id="{field}"[^>]*>', page, re.S).group(0)
        assert tag.endswith(' aria-invalid="true" aria-describedby="error">'), tag
        assert re.fullmatch(r'<input(\s+[a-z-]+(="[^"]*")?)+>', tag), tag  # attributes stay apart
    r = await site.client.get("/oauth2/sign_in?signed_out=1")
    page = await r.text()
    assert '<p class="notice info" role="status" id="info">You have signed out.</p>' in page
    assert 'id="error"' not in page and "aria-invalid" not in page
    fields = await totp_fields(site)
    r = await site.post("/oauth2/totp", {**fields, "code": "12345"})
    tag = re.search(r'<input id="code"[^>]*>', await r.text(), re.S).group(0)
    assert 'aria-invalid="true"' in tag and 'aria-describedby="error code-help"' in tag, tag


async def test_step_up_page_for_an_upstream_session_does_not_speak_of_a_password(site):
    now = time.time()
    s = site.rt.codec.new("eve", "password", now, proofs={"password": now}, source="oidc")
    site.client.session.cookie_jar.update_cookies({"fa": site.rt.codec.seal(s)})
    r = await site.client.get("/oauth2/step_up?" + urlencode({"rd": ADMIN_RD, "level": "mfa"}))
    page = await r.text()
    assert r.status == 200
    assert "through your organisation's sign-in (level <em>password</em>)" in page
    assert "with a password" not in page and "your password <strong>and</strong>" not in page
    # and for a local session it does
    site.client.session.cookie_jar.clear()
    await site.sign_in(username="alice")
    page = await (await site.client.get("/oauth2/step_up?" + urlencode({"rd": ADMIN_RD}))).text()
    assert "with a password (level <em>password</em>)" in page


async def test_with_secure_cookies_the_nonce_is_a_host_cookie_and_a_tossed_one_is_refused(tmp_path, monkeypatch):
    """Login CSRF by cookie tossing: a sibling subdomain plants its own nonce (a plain fa-csrf cookie)
    and posts the token it got for it. With Secure cookies the nonce lives in __Host-fa-csrf, which a
    sibling cannot set, so the planted pair is refused; the real pair works."""
    monkeypatch.setattr(__import__(__name__), "CONFIG", CONFIG.replace("secure: false", "secure: true"))
    site = await make_site(tmp_path, accounts=(human("alice"),))
    try:
        from forwardauth.web import csrf as csrf_mod

        r = await site.client.get("/oauth2/sign_in")
        assert re.fullmatch(r"__Host-fa-csrf=[A-Za-z0-9_-]{32}; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict; "
                            r"Secure", r.headers["Set-Cookie"]), r.headers["Set-Cookie"]
        site.client.session.cookie_jar.clear()
        nonce = "N" * 32
        token = csrf_mod.Csrf(site.rt.keyring).token(nonce, "sign_in")
        form = {"csrf": token, "rd": RD, "username": "alice", "password": PASSWORD}
        mark = site.mark()
        r = await site.post("/oauth2/sign_in", form, headers={"Cookie": f"fa-csrf={nonce}"})
        assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
        assert (site.one_new_line(mark)["event"], site.last()["reason"]) == ("signin_refused", "csrf")
        r = await site.post("/oauth2/sign_in", form, headers={"Cookie": f"__Host-fa-csrf={nonce}"})
        assert r.status == 303
    finally:
        await site.client.close()
