"""forwardauth's real app with local accounts and the WebAuthn part, in process, for HTTP tests.

A real SQLite state file and audit file; requests through aiohttp's test client
(it keeps cookies like a browser and does not follow redirects here); the
browser side of each ceremony is the software authenticator (harness.softkey),
answering the very options the app sent.

    site = await make_site(tmp_path, accounts=(human("alice"),))
    await site.sign_in("alice")                    # password: a `password` session
    answer = await site.register(key, name="Laptop")
    answer = await site.step_up(key, rd=HW_RD)
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app, parse_config
from forwardauth.core.runtime import Runtime
from forwardauth.services.passwords import ScryptParams, hash_password
from forwardauth.state.records import Account
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.web.context import CTX

from .softkey import SoftAuthenticator

FAST = ScryptParams(log_n=10)
PASSWORD = "correct-horse-battery"
ORIGIN = "https://auth.example.com"
RD = "https://app.example.com/x"
HW_RD = "https://app.example.com/hw/panel"
MFA_RD = "https://app.example.com/mfa/"

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
  - {{name: mfa, acr: ["urn:acr:mfa"]}}
  - {{name: hardware, acr: ["urn:acr:hwk"], amr: [hwk]}}
local:
  scrypt: {{log_n: 10}}
  regulation: {{max_failures: 3, max_client_failures: 50, window: 10m, ban_time: 15m}}
  audit: {audit}
{webauthn}
policy:
  rules:
    - {{hosts: [app.example.com], paths: [/hw/], level: hardware, max_age: 5m}}
    - {{hosts: [app.example.com], paths: [/mfa/], level: mfa}}
    - {{hosts: [app.example.com], level: password}}
"""
WEBAUTHN = "webauthn: {level_user_verified: hardware, level_presence: mfa}"


def human(name: str = "alice", **kw: Any) -> Account:
    now = time.time()
    return Account(name, **{"display_name": name.title(), "email": f"{name}@example.com", "groups": ("staff",),
                            "password_hash": hash_password(PASSWORD, FAST), "created": now, "updated": now, **kw})


def data_attrs(page: str, kind: str) -> dict[str, str]:
    """The data-* attributes of the first element with data-webauthn="kind" (what the script reads)."""
    m = re.search(rf'<(?:form|button|div)[^>]*data-webauthn="{kind}"[^>]*>', page, re.S)
    assert m, f"no data-webauthn={kind} element"
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', m.group(0))}


def hidden_fields(page: str) -> dict[str, str]:
    return {m.group(1): html.unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page)}


class Site:
    def __init__(self, client: TestClient, audit: Path, store: SQLiteStore, rt: Runtime):
        self.client, self.audit_path, self.store, self.rt = client, audit, store, rt

    def audit(self) -> list[dict]:
        assert self.client.server.app[CTX].audit.flush(), "audit lines still queued after 5 s"
        if not self.audit_path.exists():
            return []
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()]

    def mark(self) -> int:
        return len(self.audit())

    def since(self, mark: int) -> list[tuple[str, str | None, str | None]]:
        """(event, user, reason) of the audit lines written since `mark`."""
        return [(x["event"], x["user"], x["reason"]) for x in self.audit()[mark:]]

    async def page(self, path: str, status: int = 200) -> str:
        r = await self.client.get(path, allow_redirects=False)
        assert r.status == status, (r.status, await r.text())
        return await r.text()

    async def sign_in(self, username: str = "alice", password: str = PASSWORD, rd: str = RD) -> None:
        r = await self.client.get("/oauth2/sign_in?" + urlencode({"rd": rd}), allow_redirects=False)
        fields = hidden_fields(await r.text())
        r = await self.client.post("/oauth2/sign_in", data=urlencode({**fields, "username": username,
                                                                      "password": password}),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   allow_redirects=False)
        assert r.status == 303, (r.status, await r.text())

    async def post_json(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        r = await self.client.post(path, data=data, headers=headers, allow_redirects=False, **kw)
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    async def ceremony(self, page_path: str, kind: str, answer: Any, extra: dict | None = None,
                       csrf: str | None = None) -> tuple[int, Any]:
        """As the script does: read the page's data-*, POST options, let `answer(options)` make the
        browser's answer (or None: stop after the options), POST it. (status, JSON) of the last POST."""
        attrs = data_attrs(await self.page(page_path), kind)
        body = {"csrf": attrs["csrf"] if csrf is None else csrf, **({"rd": attrs["rd"]} if attrs.get("rd") else {}),
                **({"level": attrs["level"]} if attrs.get("level") else {}), **(extra or {})}
        status, options = await self.post_json(attrs["options"], body)
        if status != 200 or answer is None:
            return status, options
        return await self.post_json(attrs["answer"], {**body, "credential": answer(options)})

    async def register(self, key: SoftAuthenticator, name: str = "my key", origin: str = ORIGIN,
                       page: str = "/oauth2/webauthn", **bend: Any) -> tuple[int, Any]:
        return await self.ceremony(page, "register", lambda o: key.create(o, origin, **bend), {"name": name})

    async def step_up(self, key: SoftAuthenticator, rd: str = HW_RD, level: str = "", origin: str = ORIGIN,
                      again: bool = False, **bend: Any) -> tuple[int, Any]:
        q = {"rd": rd, **({"level": level} if level else {}), **({"again": "1"} if again else {})}
        return await self.ceremony("/oauth2/webauthn/step_up?" + urlencode(q), "step-up",
                                   lambda o: key.get(o, origin, **bend))

    async def passkey_sign_in(self, key: SoftAuthenticator, rd: str = HW_RD, origin: str = ORIGIN,
                              **bend: Any) -> tuple[int, Any]:
        return await self.ceremony("/oauth2/webauthn/sign_in?" + urlencode({"rd": rd}), "sign-in",
                                   lambda o: key.get(o, origin, **bend))

    async def userinfo(self) -> dict | None:
        r = await self.client.get("/oauth2/userinfo")
        return await r.json() if r.status == 200 else None

    async def close(self) -> None:
        await self.client.close()  # the app closes its store


async def make_site(tmp_path: Path, webauthn: str = WEBAUTHN, accounts: tuple[Account, ...] = (),
                    config: str = CONFIG) -> Site:
    audit = tmp_path / "audit.log"
    cfg = parse_config(config.format(db=tmp_path / "state.db", audit=audit, webauthn=webauthn), "test.yaml")
    rt = Runtime.build(cfg)
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    for a in accounts:
        await store.add_account(a)
    client = TestClient(TestServer(build_app(rt, store), host="127.0.0.1"))
    await client.start_server()
    return Site(client, audit, store, rt)
