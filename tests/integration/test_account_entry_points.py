"""One account service behind three entry points: `forwardauth users`,
`forwardauth accounts` and the admin API do the same thing, with the same
audit lines, against a real `forwardauth serve` (SQLite state).

Before the service they differed: `accounts unlock` and the API left a ban
for failed attempts in place, only `users delete` ended an upstream
identity's sessions (the others could not even name its account), and role
changes were audited in other words than group changes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from forwardauth.composition import load_config
from forwardauth.core.runtime import Runtime
from forwardauth.signin.totp import SecretBox
from forwardauth.state.records import Account
from forwardauth.state.sqlite import SQLiteStore
from harness.tokens import TokenServer

ENTRY_POINTS = ("users", "accounts", "api")
PASSWORD = "right-password-1"


@pytest.fixture(scope="module")
def fa(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("entry-points")
    server = TokenServer(workdir, extra={"local": {"audit": str(workdir / "audit.log"), "scrypt": {"log_n": 10},
                                                   "regulation": {"max_failures": 2}}})
    server.account("root", roles="admin")
    with server:
        yield server


@pytest.fixture(scope="module")
def admin(fa):
    return fa.token("root", "--name", "admin")


def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


class Entry:
    """One entry point, asked to do one thing to an account (and checked to succeed)."""

    def __init__(self, name: str, fa: TokenServer, admin: str):
        self.name, self.fa, self.admin = name, fa, admin
        self.actor = "root" if name == "api" else "operator (cli)"

    def _api(self, method: str, path: str, body=None, status: int = 200):
        r = self.fa.api(method, path, self.admin, body)
        assert r.status == status, (method, path, r.status, r.text)
        return r

    def lock(self, account: str) -> None:
        if self.name == "api":
            self._api("POST", f"/api/v1/accounts/{quote(account, safe='')}/lock")
        else:
            self.fa.cli(self.name, "lock", account)

    def unlock(self, account: str) -> None:
        if self.name == "api":
            self._api("POST", f"/api/v1/accounts/{quote(account, safe='')}/unlock")
        else:
            self.fa.cli(self.name, "unlock", account)

    def delete(self, account: str) -> None:
        if self.name == "api":
            self._api("DELETE", f"/api/v1/accounts/{quote(account, safe='')}", status=204)
        else:
            self.fa.cli(self.name, "delete", account)

    def set_groups(self, account: str, groups: list[str]) -> None:
        if self.name == "api":
            self._api("PUT", f"/api/v1/accounts/{quote(account, safe='')}/roles", {"roles": groups})
        elif self.name == "users":
            self.fa.cli("users", "groups", account, ",".join(groups) or "")
        else:
            self.fa.cli("accounts", "roles", account, "--set", ",".join(groups))

    def create_system(self, account: str, groups: list[str]) -> None:
        if self.name == "api":
            self._api("POST", "/api/v1/accounts", {"username": account, "kind": "system", "roles": groups},
                      status=201)
        elif self.name == "users":
            self.fa.cli("users", "add", account, "--system", "--groups", ",".join(groups))
        else:
            self.fa.cli("accounts", "create", account, "--kind", "system", "--roles", ",".join(groups))


@pytest.fixture(params=ENTRY_POINTS)
def entry(request, fa, admin) -> Entry:
    return Entry(request.param, fa, admin)


def lines_about(fa: TokenServer, accounts: set[str], since: int, events: set[str]) -> list[tuple[str, str, str]]:
    return [(x["event"], x["user"], x["reason"]) for x in fa.audit()[since:]
            if x["user"] in accounts and x["event"] in events]


def exchange(fa: TokenServer, user: str, password: str, client: str):
    return fa.api("POST", "/api/v1/token", body={"username": user, "password": password},
                  headers={"X-Forwarded-For": client})


def add_upstream_account(fa: TokenServer, name: str) -> None:
    """What an upstream identity's TOTP set-up leaves: an account "oidc:<sub>" holding the sealed secret."""
    ring = Runtime.build(load_config(fa.config)).keyring

    async def go():
        s = SQLiteStore(str(fa.workdir / "state.db"))
        try:
            assert await s.add_account(Account(name, totp_secret_enc=SecretBox(ring).seal(name, "A" * 32),
                                               created=time.time(), updated=time.time()))
        finally:
            await s.close()

    asyncio.run(go())


def stored(fa: TokenServer, name: str):
    async def go():
        s = SQLiteStore(str(fa.workdir / "state.db"))
        try:
            return await s.get_account(name), await s.get_dbcreds(name), await s.list_tokens(name)
        finally:
            await s.close()

    return asyncio.run(go())


def session_cookie(fa: TokenServer, sub: str) -> str:
    return fa.cli("session", "issue", "--user", sub, "--level", "password").strip()


# --- unlock lifts the ban for failed attempts, whoever unlocks ---------------------------------


def test_unlock_lifts_the_ban_everywhere(fa, entry):
    user = f"hue-{entry.name}"
    client = {"users": "203.0.113.1", "accounts": "203.0.113.2", "api": "203.0.113.3"}[entry.name]
    fa.account(user)
    p = subprocess.run([sys.executable, "-m", "forwardauth", "users", "passwd", user, "-c", str(fa.config),
                        "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert exchange(fa, user, PASSWORD, client).status == 200
    for _ in range(2):
        assert exchange(fa, user, "wrong-password", client).status == 401
    banned = exchange(fa, user, PASSWORD, "198.51.100.1")  # the username is banned, from any address
    assert (banned.status, banned.json()["error"]) == (429, "slow_down")
    since = len(fa.audit())
    entry.lock(user)
    entry.unlock(user)
    r = exchange(fa, user, PASSWORD, client)
    assert r.status == 200, r.text  # on main, `accounts unlock` and the API left the ban in place: 429
    assert lines_about(fa, {user}, since, {"account_locked", "account_unlocked"}) == [
        ("account_locked", user, f"by {entry.actor}; every session and token revoked"),
        ("account_unlocked", user, f"by {entry.actor}; failed-attempt ban lifted; older sessions and tokens "
                                   "stay revoked")]


def test_unlock_lifts_an_upstream_identitys_totp_ban(fa, entry):
    """The TOTP of an upstream identity is regulated under its account's name ("oidc:<sub>")."""
    from forwardauth.services.regulation import Regulator
    from forwardauth.signin.settings import settings

    name = f"oidc:Ban-{entry.name.upper()}"
    add_upstream_account(fa, name)
    reg_config = settings(load_config(fa.config)).regulation

    async def banned(fail: bool) -> bool:
        s = SQLiteStore(str(fa.workdir / "state.db"))
        try:
            reg = Regulator(s, reg_config)
            if fail:
                for _ in range(2):
                    await reg.failed(name, "192.0.2.9", time.time())
            return (await reg.check(name, None, time.time())).banned
        finally:
            await s.close()

    assert asyncio.run(banned(True)) is True
    entry.unlock(name)
    assert asyncio.run(banned(False)) is False


# --- delete leaves nothing valid, whoever deletes ---------------------------------------------


def test_delete_leaves_no_session_token_dbcreds_or_upstream_session(fa, admin, entry):
    human, system, upstream = f"del-{entry.name}", f"svc-{entry.name}", f"oidc:Up-{entry.name.upper()}"
    sub = upstream.split(":", 1)[1]
    fa.account(human)
    fa.account(system, kind="system")
    add_upstream_account(fa, upstream)
    human_token = fa.token(human)
    system_token = fa.token(system)
    creds = {"host": "db", "port": 5432, "database": "d", "username": "u", "password": f"pw-{entry.name}"}
    assert fa.api("PUT", f"/api/v1/accounts/{system}/dbcreds", admin, creds).status == 204
    cookies = {who: session_cookie(fa, who) for who in (human, system, sub)}
    for tok in (human_token, system_token):
        assert eventually(lambda tok=tok: fa.decide("/api/x", tok).status == 200), tok[:12]
    for who, cookie in cookies.items():
        assert fa.decide("/api/x", cookie=cookie).status == 200, who
    assert json.loads(fa.cli("dbcreds", "get", system)) == creds

    since = len(fa.audit())
    for account in (human, system, upstream):
        entry.delete(account)  # on main, `accounts` and the API refused the name "oidc:<sub>"

    for tok in (human_token, system_token):
        assert eventually(lambda tok=tok: fa.decide("/api/x", tok).status == 401), tok[:12]
    for who, cookie in cookies.items():
        assert eventually(lambda cookie=cookie: fa.decide("/api/x", cookie=cookie).status == 401), who
    for account in (human, system, upstream):
        acct, dbcreds, tokens = stored(fa, account)
        assert acct is None and dbcreds is None and all(t.revoked is not None for t in tokens), account
    ids = {t.account: t.id for name in (human, system) for t in stored(fa, name)[2]}
    names = {t.account: t.name for name in (human, system) for t in stored(fa, name)[2]}
    events = {"account_deleted", "token_revoked"}
    assert lines_about(fa, {human, system, upstream}, since, events) == [
        ("token_revoked", human, f"token {ids[human]} ({names[human]}): account deleted by {entry.actor}"),
        ("account_deleted", human, f"by {entry.actor}; tokens, sessions, approving devices and database credentials removed"),
        ("token_revoked", system, f"token {ids[system]} ({names[system]}): account deleted by {entry.actor}"),
        ("account_deleted", system, f"by {entry.actor}; tokens, sessions, approving devices and database credentials removed"),
        ("account_deleted", upstream, f"by {entry.actor}; tokens, sessions, approving devices and database credentials removed")]


# --- groups (roles) and creation: one rule, one audit line ----------------------------------------


def test_groups_change_ends_tokens_and_is_audited_alike(fa, entry):
    user = f"grp-{entry.name}"
    fa.account(user, roles="staff")
    tok = fa.token(user)
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    since = len(fa.audit())
    entry.set_groups(user, ["staff", "ops"])
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)
    entry.set_groups(user, ["staff", "ops"])  # the same again: nothing changes, nothing is written
    assert stored(fa, user)[0].groups == ("staff", "ops")
    assert lines_about(fa, {user}, since, {"account_updated"}) == [
        ("account_updated", user, f"groups set to staff,ops by {entry.actor}; sessions and tokens revoked")]


def test_create_is_the_same_everywhere(fa, entry):
    user = f"new-{entry.name}"
    since = len(fa.audit())
    entry.create_system(user, ["bots"])
    acct = stored(fa, user)[0]
    assert (acct.kind, acct.groups, acct.status, acct.password_hash) == ("system", ("bots",), "active", None)
    assert lines_about(fa, {user}, since, {"account_created"}) == [
        ("account_created", user, f"system account by {entry.actor}")]


# --- the names of existing accounts: refusals ---------------------------------------------------


def test_accounts_cli_names_upstream_accounts_or_says_why(fa):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "forwardauth", "accounts", args[0], "-c", str(fa.config),
                               *args[1:]], capture_output=True, text=True, timeout=60)

    p = run("show", "oidc:nobody")
    assert (p.returncode, p.stdout, p.stderr) == (2, "", "forwardauth: no account 'oidc:nobody'\n")
    for bad in ("oidc:a b", "OIDC:x", "Bad Name"):
        p = run("delete", bad)
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.endswith("argument name: account names are 1-64 of a-z 0-9 . _ @ + - (starting with "
                                 "a-z 0-9), or <source>:<sub> for an upstream identity's account as listed\n"), bad
    p = run("create", "oidc:new")  # upstream identities' accounts are made by their TOTP set-up, never by hand
    assert p.returncode == 2 and p.stderr.endswith(
        "argument name: account names are 1-64 of a-z 0-9 . _ @ + - (starting with a-z 0-9)\n")


@pytest.mark.parametrize("method, path, status, body", [
    ("GET", "/api/v1/accounts/oidc:nobody", 404, {"error": "not_found", "error_description": "no account "
                                                                                            "'oidc:nobody'"}),
    ("POST", "/api/v1/accounts/oidc:nobody/unlock", 404, {"error": "not_found",
                                                          "error_description": "no account 'oidc:nobody'"}),
    ("DELETE", "/api/v1/accounts/OIDC:x", 400, {"error": "invalid_request", "error_description":
                                                "account names are 1-64 of a-z 0-9 . _ @ + -, or <source>:<sub> "
                                                "for an upstream identity's account as listed"}),
    ("POST", "/api/v1/accounts/oidc:a%20b/lock", 400, {"error": "invalid_request", "error_description":
                                                       "account names are 1-64 of a-z 0-9 . _ @ + -, or "
                                                       "<source>:<sub> for an upstream identity's account as "
                                                       "listed"}),
    ("GET", "/api/v1/accounts/oidc:x/tokens", 400, {"error": "invalid_request", "error_description":
                                                    "account names are 1-64 of a-z 0-9 . _ @ + -"}),
])
def test_api_names_upstream_accounts_or_says_why(fa, admin, method, path, status, body):
    r = eventually(lambda: (x := fa.api(method, path, admin)).status != 401 and x)
    assert (r.status, r.json()) == (status, body)
