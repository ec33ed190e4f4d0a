"""Local sign-in over HTTP: every bad input gets its exact answer and an audit line.

The real aiohttp app (build_app with the sign-in part), a real SQLite state
file and a real audit file; requests through aiohttp's test client, which
keeps cookies like a browser and is told not to follow redirects.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.accounts import Account
from forwardauth.config import parse_config
from forwardauth.passwords import ScryptParams, hash_password
from forwardauth.runtime import Runtime
from forwardauth.server import build_app
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.totp import SecretBox, code_at, current_step

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
        if not self.audit_path.exists():
            return []
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()]

    def last(self) -> dict:
        lines = self.audit()
        assert lines, "no audit line written"
        return lines[-1]

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
    m = re.search(r'<p class="notice error" role="alert" id="message">(.*?)</p>', page)
    return m.group(1) if m else None


async def make_site(tmp_path: Path, extra: str = "", accounts: tuple[Account, ...] = ()):
    audit = tmp_path / "audit.log"
    cfg = parse_config(CONFIG.format(db=tmp_path / "state.db", audit=audit, extra=extra), "test.yaml")
    rt = Runtime.build(cfg)
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    now = time.time()
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
    r = await site.sign_in(headers={"X-Forwarded-For": "203.0.113.9", "X-Request-Id": "req-1"})
    assert r.status == 303 and r.headers["Location"] == RD
    assert any(c.startswith("fa=") for c in r.headers.getall("Set-Cookie"))
    assert await site.userinfo() == {**(await site.userinfo()), "user": "alice", "level": "password",
                                      "groups": ["staff"], "email": "alice@example.com", "source": "local"}
    line = site.last()
    assert line["event"] == "signin_ok" and line["user"] == "alice" and line["level"] == "password"
    assert (line["client"], line["host"], line["path"], line["request_id"]) == (
        "203.0.113.9", "app.example.com", "/x", "req-1")
    assert PASSWORD not in site.audit_path.read_text()


async def test_username_is_case_insensitive(site):
    r = await site.sign_in(username="  ALICE ")
    assert r.status == 303


async def test_wrong_password_and_unknown_user_read_the_same(site):
    wrong = await site.sign_in(password="not-the-password")
    unknown = await site.sign_in(username="mallory", password="not-the-password")
    assert wrong.status == unknown.status == 401
    assert wrong.headers["Content-Type"] == unknown.headers["Content-Type"] == HTML
    assert error_of(await wrong.text()) == error_of(await unknown.text()) == MSG_WRONG
    a, b = site.audit()[-2:]
    assert (a["event"], a["user"], a["reason"]) == ("signin_failed", "alice", "wrong_password")
    # an unknown name may be a password typed into the wrong box: it is not written down
    assert (b["event"], b["user"], b["reason"]) == ("signin_failed", None, "unknown_user")
    assert "mallory" not in site.audit_path.read_text() and "not-the-password" not in site.audit_path.read_text()
    assert await site.userinfo() is None


async def test_system_account_cannot_sign_in_with_a_password(site):
    r = await site.sign_in(username="robot", password=PASSWORD)
    assert r.status == 401 and error_of(await r.text()) == MSG_WRONG
    line = site.last()
    assert (line["event"], line["user"], line["reason"]) == ("signin_failed", "robot", "system_account")


async def test_locked_account(site):
    r = await site.sign_in(username="locked")
    assert r.status == 403 and error_of(await r.text()) == MSG_LOCKED
    assert (site.last()["event"], site.last()["user"], site.last()["reason"]) == ("signin_refused", "locked",
                                                                                  "locked")
    r = await site.sign_in(username="locked", password="wrong-one")
    assert r.status == 401 and error_of(await r.text()) == MSG_WRONG  # the lock is told only to the owner
    assert await site.userinfo() is None


async def test_banned_after_three_failures_same_for_unknown_users(site):
    for name in ("alice", "ghost"):
        statuses = []
        for _ in range(3):
            r = await site.sign_in(username=name, password="bad-password")
            statuses.append(r.status)
        assert statuses == [401, 401, 429]
        assert r.headers["Retry-After"] == "901"
        line = site.last()
        reason = "wrong_password" if name == "alice" else "unknown_user"
        assert (line["event"], line["reason"]) == ("signin_failed", f"{reason}; ban started")
        assert error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
        # the right password does not help while banned (and is not even checked)
        r = await site.sign_in(username=name, password=PASSWORD)
        assert r.status == 429 and error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
        assert 890 <= int(r.headers["Retry-After"]) <= 901
        line = site.last()
        assert (line["event"], line["reason"]) == ("signin_refused", "banned")
    assert (await site.sign_in(username="carol")).status == 303  # others are not affected


async def test_missing_and_wrong_csrf_token(site):
    fields = await site.form("/oauth2/sign_in")
    no_token = {k: v for k, v in fields.items() if k != "csrf"}
    for data in ({**no_token, "username": "alice", "password": PASSWORD},
                 {**fields, "csrf": fields["csrf"][:-2] + "xx", "username": "alice", "password": PASSWORD},
                 {**fields, "csrf": "", "username": "alice", "password": PASSWORD}):
        r = await site.post("/oauth2/sign_in", data)
        assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
        line = site.last()
        assert (line["event"], line["reason"]) == ("signin_refused", "csrf")
    # a valid token without its cookie (another browser) is refused too
    site.client.session.cookie_jar.clear()
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": PASSWORD})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert await site.userinfo() is None


async def test_oversized_form(site):
    fields = await site.form("/oauth2/sign_in")
    for size in (9000, 200_000):
        r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": "x" * size})
        assert r.status == 413 and error_of(await r.text()) == MSG_TOO_LARGE
        line = site.last()
        assert (line["event"], line["reason"]) == ("signin_failed", "oversized_form")


async def test_oversized_fields(site):
    fields = await site.form("/oauth2/sign_in")
    for user, pw in (("a" * 129, PASSWORD), ("alice", "p" * 1025)):
        r = await site.post("/oauth2/sign_in", {**fields, "username": user, "password": pw})
        assert r.status == 400 and error_of(await r.text()) == MSG_TOO_LONG
        assert (site.last()["event"], site.last()["reason"]) == ("signin_failed", "oversized_field")


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
    r = await site.post("/oauth2/sign_in", prefix + body, headers={"Content-Type": ctype})
    assert r.status == 400 and error_of(await r.text()) == MSG_MALFORMED
    assert (site.last()["event"], site.last()["reason"]) == ("signin_failed", "malformed_form")


async def test_missing_fields_and_empty_values(site):
    fields = await site.form("/oauth2/sign_in")
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice"})
    assert r.status == 400 and error_of(await r.text()) == MSG_MALFORMED
    assert (site.last()["event"], site.last()["reason"]) == ("signin_failed", "malformed_form")
    r = await site.post("/oauth2/sign_in", {**fields, "username": "alice", "password": ""})
    assert r.status == 400 and error_of(await r.text()) == MSG_EMPTY
    assert (site.last()["event"], site.last()["reason"]) == ("signin_failed", "empty_field")


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
    r = await site.post("/oauth2/totp", {**fields, "code": code[:3] + " " + code[3:]})
    assert r.status == 303 and r.headers["Location"] == ADMIN_RD
    info = await site.userinfo()
    assert info["level"] == "mfa" and set(info["proven"]) == {"password", "mfa"}
    line = site.last()
    assert (line["event"], line["user"], line["level"], line["reason"], line["path"]) == (
        "step_up", "carol", "mfa", "totp", "/admin/panel")
    # the same code again (say, from a second tab) is refused
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    r = await site.post("/oauth2/totp", {**fields, "code": code})
    assert r.status == 401 and error_of(await r.text()) == MSG_CODE_REPLAYED
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "replayed")
    assert code not in site.audit_path.read_text().replace(site.audit()[0]["time"], "")


async def test_totp_bad_inputs(site):
    await site.sign_in(username="carol")
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    step = current_step(time.time())
    window = {code_at(SECRET, s) for s in (step - 1, step, step + 1, step + 2)}
    wrong = next(c for c in (f"{i:06d}" for i in range(1000)) if c not in window)

    r = await site.post("/oauth2/totp", {**fields, "code": "12345"})
    assert r.status == 400 and error_of(await r.text()) == MSG_CODE_FORMAT
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "malformed_code")
    r = await site.post("/oauth2/totp", {k: v for k, v in fields.items()})
    assert r.status == 400 and error_of(await r.text()) == MSG_CODE_FORMAT
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "malformed_form")
    r = await site.post("/oauth2/totp", {**fields, "code": wrong})
    assert r.status == 401 and error_of(await r.text()) == MSG_CODE_WRONG
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "wrong_code")
    r = await site.post("/oauth2/totp", {**fields, "csrf": "k1.AAAA", "code": wrong})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "csrf")
    # a token made for the sign-in form does not work here (bound to form and session)
    signin_fields = await site.form("/oauth2/sign_in")
    r = await site.post("/oauth2/totp", {**fields, "csrf": signin_fields["csrf"], "code": wrong})
    assert r.status == 403
    # two more wrong codes: banned, like passwords
    await site.post("/oauth2/totp", {**fields, "code": wrong})
    r = await site.post("/oauth2/totp", {**fields, "code": wrong})
    assert r.status == 429 and error_of(await r.text()) == "Too many failed attempts. Try again in 15 minutes."
    assert r.headers["Retry-After"] == "901"
    assert (await site.userinfo())["level"] == "password"


async def test_totp_without_a_session(site):
    fields = await site.form("/oauth2/sign_in")
    r = await site.post("/oauth2/totp", {"csrf": fields["csrf"], "code": "123456", "rd": ADMIN_RD})
    assert r.status == 401 and error_of(await r.text()) == MSG_SESSION_ENDED
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "no_session")
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
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": "000000" if code_at(secret, current_step(
        time.time())) != "000000" else "111111"})
    assert r.status in (401,) and error_of(await r.text()) == MSG_CODE_WRONG
    assert secret.replace(" ", "") in (await r.text()).replace(" ", "")
    code = code_at(secret, current_step(time.time()))
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": code})
    assert r.status == 303 and r.headers["Location"] == ADMIN_RD
    assert (await site.userinfo())["level"] == "mfa"
    events = [(x["event"], x["user"], x["level"]) for x in site.audit()[-2:]]
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


async def test_enrolment_bad_inputs(site):
    await site.sign_in(username="alice")
    r = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}))
    fields = hidden_fields(await r.text())
    r = await site.post("/oauth2/totp/enroll", {**fields, "pending": fields["pending"][:-3] + "abc",
                                                "code": "123456"})
    assert r.status == 400 and error_of(await r.text()) == "This set-up page has expired. Please start again."
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "enrolment_expired")
    r = await site.post("/oauth2/totp/enroll", {**fields, "code": "12x456"})
    assert r.status == 400 and error_of(await r.text()) == MSG_CODE_FORMAT
    r = await site.post("/oauth2/totp/enroll", {k: v for k, v in fields.items() if k != "csrf"} | {"code": "1"})
    assert r.status == 403 and error_of(await r.text()) == MSG_CSRF
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "csrf")
    r = await site.post("/oauth2/totp/enroll", {"csrf": fields["csrf"]})
    assert r.status == 400 and error_of(await r.text()) == MSG_MALFORMED
    assert not (await site.store.get_account("alice")).has_totp


async def test_pending_secret_of_one_user_does_not_enrol_another(site):
    await site.sign_in(username="alice")
    r = await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}))
    page = await r.text()
    alice_pending = hidden_fields(page)["pending"]
    secret = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', page).group(1).replace(" ", "")
    site.client.session.cookie_jar.clear()
    await site.store.add_account(human("bob"))
    assert (await site.sign_in(username="bob")).status == 303
    fields = hidden_fields(await (await site.client.get("/oauth2/totp/enroll?" + urlencode({"rd": ADMIN_RD}))).text())
    r = await site.post("/oauth2/totp/enroll", {**fields, "pending": alice_pending,
                                                "code": code_at(secret, current_step(time.time()))})
    assert r.status == 400 and not (await site.store.get_account("bob")).has_totp


async def test_locked_while_signed_in_cannot_step_up(site):
    await site.sign_in(username="carol")
    acct = await site.store.get_account("carol")
    await site.store.put_account(acct.changed(status="locked"))
    fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
    r = await site.post("/oauth2/totp", {**fields, "code": code_at(SECRET, current_step(time.time()))})
    assert r.status == 403 and error_of(await r.text()) == MSG_LOCKED
    assert (site.last()["event"], site.last()["reason"]) == ("totp_failed", "locked")


async def test_decision_denied_is_audited(site):
    await site.sign_in(username="alice")
    cookie = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))["fa"].value
    r = await site.client.get("/auth/nginx", headers={"X-Original-URL": "https://app.example.com/closed/x?t=s3cr3t",
                                                      "X-Original-Method": "GET", "Cookie": f"fa={cookie}"})
    assert r.status == 403
    line = site.last()
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
    r = await site.client.get("/oauth2/sign_out?rd=https://app.example.com/bye", allow_redirects=False,
                              headers={"X-Forwarded-For": "198.51.100.4", "X-Request-Id": "out-1"})
    assert r.status == 302 and r.headers["Location"] == "https://app.example.com/bye"
    line = site.last()
    assert (line["event"], line["user"], line["client"], line["level"], line["reason"], line["request_id"]) == (
        "signout", "alice", "198.51.100.4", "password", "local", "out-1")
    assert await site.userinfo() is None
