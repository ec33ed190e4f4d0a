"""The parts, composed explicitly: what each adds is per app, and the CLI's
config commands stay light (no aiohttp)."""

from __future__ import annotations

import subprocess
import sys
import time

from aiohttp.test_utils import TestClient, TestServer

from forwardauth import composition
from forwardauth.core.runtime import Runtime
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account
from forwardauth.tokens.api.auth import TOKENS
from forwardauth.tokens.service import OPERATOR, TokenService
from forwardauth.web.context import CTX

from .conftest import make_config

POLICY = "policy: {rules: [{level: password}]}\n"
OIDC = "oidc: {issuer: https://idp.example.com, client_id: fa, client_secret: s}\n"


def test_every_part_has_its_own_name_and_sections():
    names = [p.name for p in composition.PARTS]
    assert len(set(names)) == len(names)
    sections = [s for p in composition.PARTS for s in p.sections]
    assert len(set(sections)) == len(sections) == len(composition.SECTIONS)
    assert set(composition.SECTIONS) == {"devices", "local", "oidc", "tokens", "webauthn"}


async def test_two_apps_in_one_process_share_nothing():
    """Before, parts appended their hooks to module-level lists at import, and
    per-app state lived in a free-form dict: two apps in one process shared
    the hook lists. Now each app has its own contributions and part state."""
    a_store, b_store = MemoryStore(), MemoryStore()
    a = composition.build_app(Runtime.build(make_config(POLICY + OIDC)), a_store)
    b = composition.build_app(Runtime.build(make_config(POLICY)), b_store)
    ca, cb = a[CTX], b[CTX]
    assert [f.name for f in ca.factors] == [f.name for f in cb.factors] == ["device", "local", "webauthn", "upstream"]
    assert ca.factors is not cb.factors and ca.decisions[0] is not cb.decisions[0]
    assert a[TOKENS] is not b[TOKENS] and ca.refreshed[0] is not cb.refreshed[0]
    assert ca.sign_out and not cb.sign_out  # only the app with an `oidc:` section signs out upstream
    paths_a = {r.resource.canonical for r in a.router.routes()}
    paths_b = {r.resource.canonical for r in b.router.routes()}
    assert paths_a - paths_b == {"/oauth2/callback", "/oauth2/signed_out"}

    svc = TokenService(ca.runtime.config, ca.runtime.keyring, a_store)
    await svc.accounts.add_account(Account("bob"))
    token = (await svc.issue(OPERATOR, "bob")).token
    headers = {"X-Original-URL": "https://app.test/x", "X-Original-Method": "GET", "Authorization": f"Bearer {token}"}
    async with TestClient(TestServer(a, host="127.0.0.1")) as ta, TestClient(TestServer(b, host="127.0.0.1")) as tb:
        for app in (a, b):
            await app[TOKENS].index.refresh(app[CTX].store, 10.0, force=True)
        ra = await ta.get("/auth/nginx", headers=headers)
        rb = await tb.get("/auth/nginx", headers=headers)
        assert (ra.status, ra.headers["X-Auth-Request-User"]) == (200, "bob")
        assert rb.status == 401 and 'error_description="unknown or revoked"' in rb.headers["WWW-Authenticate"]


def _has(modules: str, name: str) -> bool:
    """Whether `name` or one of its submodules was imported (forwardauth.webauthn is not forwardauth.web)."""
    return f" {name} " in modules or f" {name}." in modules


def _imported(*argv: str) -> tuple[int, str]:
    """Run `forwardauth ARGV` with -X importtime; (exit status, the modules it imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "forwardauth", *argv], capture_output=True,
                          text=True, timeout=60)
    modules = " ".join(line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line)
    return proc.returncode, " " + modules + " "


def test_check_and_explain_import_no_aiohttp(tmp_path):
    from forwardauth.cli import main

    assert main(["keys", "generate", "-o", str(tmp_path / "keys.json")]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("keys: {file: keys.json}\nstate: sqlite://state.db\nlevels: [{name: password, acr: [p]}]\n"
                   + POLICY + "local: {enabled: true}\ntokens: {stale_grace: 10s}\ndevices: {level: password}\n")
    code, modules = _imported("check", "-c", str(cfg))
    assert code == 0 and "forwardauth.core.config" in modules
    assert not _has(modules, "fido2")  # the WebAuthn part's config and CLI need no WebAuthn library
    assert not _has(modules, "aiohttp") and not _has(modules, "jinja2") and not _has(modules, "forwardauth.web")
    code, modules = _imported("explain", "-c", str(cfg), "--url", "https://app.test/x")
    assert code == 0 and "forwardauth.core.authorize" in modules
    assert not _has(modules, "aiohttp") and not _has(modules, "forwardauth.web")
    cookie = Runtime.build(composition.load_config(cfg)).codec
    value = cookie.seal(cookie.new("alice", "password", time.time()))
    code, modules = _imported("explain", "-c", str(cfg), "--url", "https://app.test/x", "--cookie", value)
    assert code == 0 and "forwardauth.tokens.decisions" in modules and not _has(modules, "aiohttp")
