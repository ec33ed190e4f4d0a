"""`forwardauth explain --cookie/--token` answers what the server answers.

One config, one SQLite state file, one app serving /auth/*: each case asks
the server (through the aiohttp app, as a proxy would) and `explain` (through
the CLI, in process) about the same URL with the same credential, and the
two answers must be the same: status, headers (a refreshed cookie's value
is not shown by explain, only its name) and body.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forwardauth.cli import main
from forwardauth.composition import build_app, load_config
from forwardauth.core.runtime import Runtime
from forwardauth.state.records import Account
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens.api.auth import TOKENS
from forwardauth.tokens.service import OPERATOR, TokenService
from forwardauth.web.context import CTX

CONFIG = """
server: {listen: 127.0.0.1:4180, public_url: https://auth.example.com, trusted_proxies: [127.0.0.1/32]}
session: {cookie_name: fa, secure: false, lifetime: 12h, idle_timeout: 10m}
keys: {file: keys.json}
state: sqlite://state.db
levels:
  - {name: password, acr: [urn:p]}
  - {name: mfa, acr: [urn:m]}
policy:
  rules:
    - {name: public, hosts: [app.test], paths: [/public/], allow: anonymous}
    - {name: closed, hosts: [app.test], paths: [/closed/], deny: true}
    - {name: admin, hosts: [app.test], paths: [/admin/], level: mfa, max_age: 15m, groups: [admins]}
    - {name: app, hosts: [app.test], level: password}
tokens: {default_level: password}
"""


@pytest.fixture
async def world(tmp_path):
    assert main(["keys", "generate", "-o", str(tmp_path / "keys.json")]) == 0
    cfg_path = tmp_path / "forwardauth.yaml"
    cfg_path.write_text(CONFIG)
    rt = Runtime.build(load_config(cfg_path))
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    svc = TokenService(rt.config, rt.keyring, store)
    await svc.accounts.add_account(Account("bob", groups=("staff",)))
    await svc.accounts.add_account(Account("carol"))
    now = time.time()
    c = {}
    c["bob"] = (await svc.issue(OPERATOR, "bob", name="laptop")).token
    c["narrow"] = mac.deserialize(c["bob"]).add_caveat("path=/api/").serialize()
    revoked = await svc.issue(OPERATOR, "bob", name="old")
    await svc.revoke(OPERATOR, revoked.meta.id)
    c["revoked_token"] = revoked.token
    c["carol"] = (await svc.issue(OPERATOR, "carol")).token
    await svc.lock(OPERATOR, "carol")
    c["unknown"] = mac.mint(rt.keyring, mac.new_token_id(), mac.deserialize(c["bob"]).caveats).serialize()

    def cookie(user: str, level: str, at: float, **kw: object) -> str:
        return rt.codec.seal(rt.codec.new(user, level, at, **kw))  # type: ignore[arg-type]

    c["alice"] = cookie("alice", "password", now)
    c["admin"] = cookie("alice", "mfa", now, groups=("admins",))
    c["stale_admin"] = cookie("alice", "mfa", now, groups=("admins",), proofs={"mfa": now - 1200})
    c["weak_admin"] = cookie("alice", "password", now, groups=("admins",))
    c["expired"] = cookie("alice", "password", now - 13 * 3600)
    c["refresh"] = cookie("dave", "password", now - 400)  # idle 10m: re-sealed after 5m
    c["tampered"] = c["alice"][:-4] + "AAAA"
    gone = rt.codec.new("erin", "password", now)
    c["signed_out"] = rt.codec.seal(gone)
    await store.revoke(gone.sid, gone.exp)
    c["epoch"] = cookie("frank", "password", now - 5)
    await store.set_epoch("frank", now)
    await store.close()

    app = build_app(rt)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        ctx = app[CTX]
        await ctx.revocations.refresh(ctx.store)
        await app[TOKENS].index.refresh(ctx.store, 10.0, force=True)
        yield client, cfg_path, c


# (URL, credential kind, credential name, what /auth/nginx answers: status and a header or body fragment)
CASES = [
    ("https://app.test/x", None, None, (401, 'Bearer realm="forwardauth"')),
    ("https://app.test/public/a", None, None, (200, "")),
    ("https://app.test/closed/x", None, None, (403, "denied by policy")),
    ("https://app.test/x", "cookie", "alice", (200, "X-Auth-Request-User: alice")),
    ("https://app.test/admin/x", "cookie", "alice", (403, "your account is not allowed here")),
    ("https://app.test/admin/x", "cookie", "weak_admin", (401, "insufficient_user_authentication")),
    ("https://app.test/admin/x", "cookie", "admin", (200, "X-Auth-Request-Groups: admins")),
    ("https://app.test/admin/x", "cookie", "stale_admin", (401, "proven within 15m")),
    ("https://app.test/closed/x", "cookie", "admin", (403, "denied by policy")),
    ("https://app.test/x", "cookie", "expired", (401, "Sign-in required")),
    ("https://app.test/x", "cookie", "tampered", (401, "Sign-in required")),
    ("https://app.test/x", "cookie", "signed_out", (401, "Sign-in required")),
    ("https://app.test/x", "cookie", "epoch", (401, "Sign-in required")),
    ("https://app.test/x", "cookie", "refresh", (200, "Set-Cookie: (not shown)")),
    ("https://app.test/x", "token", "bob", (200, "X-Auth-Request-User: bob")),
    ("https://app.test/admin/x", "token", "bob", (403, "your account is not allowed here")),
    ("https://app.test/api/x", "token", "narrow", (200, "X-Auth-Request-User: bob")),
    ("https://app.test/x", "token", "narrow", (401, 'error_description="path not allowed by token"')),
    ("https://app.test/x", "token", "revoked_token", (401, 'error_description="unknown or revoked"')),
    ("https://app.test/x", "token", "carol", (401, 'error_description="account missing or locked"')),
    ("https://app.test/x", "token", "unknown", (401, 'error_description="unknown or revoked"')),
    ("https://app.test/public/a", "token", "unknown", (200, "")),
    ("https://app.test/x", "token", "fa1_AAAA", (401, 'error="invalid_token"')),
    ("https://app.test/ADMIN/x", "cookie", "weak_admin", (401, "insufficient_user_authentication")),
]


def _shown(headers: list[tuple[str, str]]) -> list[list[str]]:
    """The headers as explain shows them: a cookie's value is not shown."""
    return [[k, "(not shown)" if k.lower() == "set-cookie" else v] for k, v in headers]


@pytest.mark.parametrize("proxy", ["nginx", "traefik"])
@pytest.mark.parametrize("url, kind, name, nginx", CASES)
async def test_explain_answers_what_the_server_answers(world, capsys, proxy, url, kind, name, nginx):
    client, cfg_path, creds = world
    value = creds.get(name, name) if name else None
    headers = {"Accept": "text/html"}
    args = ["explain", "-c", str(cfg_path), "--url", url, "--proxy", proxy, "--json"]
    if kind == "cookie":
        headers["Cookie"] = f"fa={value}"
        args += ["--cookie", value]
    elif kind == "token":
        headers["Authorization"] = f"Bearer {value}"
        args += ["--token", value]
    if proxy == "nginx":
        headers.update({"X-Original-URL": url, "X-Original-Method": "GET"})
    else:
        host, _, path = url.removeprefix("https://").partition("/")
        headers.update({"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": host,
                        "X-Forwarded-Uri": "/" + path})
    r = await client.get(f"/auth/{proxy}", headers=headers, allow_redirects=False)
    served = {"status": r.status, "body": await r.text(),
              "headers": _shown([(k, v) for k, v in r.headers.items()
                                 if k not in ("Content-Length", "Content-Type", "Date", "Server")])}
    client.server.app[CTX].audit.flush()  # a denial's audit line goes to stdout (`local.audit` unset)
    capsys.readouterr()
    assert await asyncio.to_thread(main, args) == 0  # explain runs its own event loop
    explained = json.loads(capsys.readouterr().out)["answer"]
    assert explained == served
    if proxy == "nginx":  # each case is what it says it is
        status, fragment = nginx
        text = served["body"] + "".join(f"{k}: {v}\n" for k, v in served["headers"])
        assert served["status"] == status and fragment in text, served
