"""Passwordless sign-in with a passkey, the offers on the sign-in pages, and the
administrator's tools (admin API, `forwardauth webauthn` CLI), over the real app
(see test_webauthn_http.py for the set-up)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from forwardauth.state.records import webauthn_fingerprint
from forwardauth.tokens.api.auth import TOKENS
from forwardauth.tokens.service import OPERATOR, TokenService
from forwardauth.web.context import CTX
from harness.softkey import SoftAuthenticator
from harness.webauthn_site import CONFIG, HW_RD, MFA_RD, human, make_site

MSG_UNKNOWN = "This security key or passkey is not registered here (or it was removed)."


@pytest.fixture
async def site(tmp_path):
    s = await make_site(tmp_path, accounts=(human("alice"), human("bob"), human("locked", status="locked"),
                                            human("root", groups=("admin",))))
    yield s
    await s.close()


async def _with_key(site, user: str = "alice", **kw) -> SoftAuthenticator:
    """A key registered by `user` (signed in with the password), then signed out."""
    await site.sign_in(user)
    key = SoftAuthenticator(**kw)
    assert (await site.register(key))[0] == 200
    site.client.session.cookie_jar.clear()
    return key


async def test_the_sign_in_page_offers_a_passkey(site):
    page = await site.page("/oauth2/sign_in?" + urlencode({"rd": HW_RD, "level": "hardware"}))
    link = "/oauth2/webauthn/sign_in?" + urlencode({"rd": HW_RD, "level": "hardware"})
    assert f'<p class="alt"><a href="{link.replace("&", "&amp;")}">Sign in with a passkey</a></p>' in page
    page = await site.page("/oauth2/webauthn/sign_in?" + urlencode({"rd": HW_RD}))
    assert 'autocomplete="username webauthn"' in page  # conditional UI: passkeys offered in the name's autofill
    assert 'data-webauthn="sign-in" data-conditional' in page
    assert '<a href="/oauth2/start?' + urlencode({"rd": HW_RD, "level": "hardware", "via": "local"}).replace(
        "&", "&amp;") + '">Sign in another way</a>' in page


async def test_a_passkey_alone_signs_in_and_reaches_hardware(site):
    key = await _with_key(site)
    mark = site.mark()
    assert await site.passkey_sign_in(key) == (200, {"redirect": HW_RD})
    info = await site.userinfo()
    assert (info["user"], info["level"], info["groups"], info["source"], list(info["proven"])) == (
        "alice", "hardware", ["staff"], "local", ["hardware"])
    fp = webauthn_fingerprint(key.credentials[0].id)
    assert site.since(mark) == [("signin_ok", "alice", "webauthn: 'my key' (with user verification; amr hwk user mfa)"
                                                       f"; key {fp}")]
    r = await site.client.get("/oauth2/start?" + urlencode({"rd": HW_RD}), allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (302, HW_RD)


async def test_a_key_without_user_verification_cannot_sign_in_alone(site):
    key = await _with_key(site, user_verification=False)
    st, body = await site.passkey_sign_in(key)
    assert (st, body["error"]) == (401, "Your security key did not verify you (PIN or fingerprint), and this page "
                                        "needs that. Use a key that can, or a passkey.")
    assert await site.userinfo() is None


async def test_an_unknown_passkey_counts_for_the_client(site):
    stranger = SoftAuthenticator()
    other = await make_site(site.audit_path.parent / "elsewhere", accounts=(human("alice"),))
    try:
        await other.sign_in()
        await other.register(stranger)
    finally:
        await other.close()
    mark = site.mark()
    assert await site.passkey_sign_in(stranger) == (401, {"error": MSG_UNKNOWN})
    assert site.since(mark) == [("webauthn_failed", None, "sign-in: unknown credential")]


@pytest.mark.parametrize("who, message, reason", [
    ("locked", "This account is locked. Ask an administrator to unlock it.", "passkey: account locked"),
    ("gone", "This passkey cannot sign in here on its own: sign in another way, then use it.",
     "passkey: not a local account"),
])
async def test_a_passkey_of_an_account_that_cannot_sign_in(site, who, message, reason):
    key = await _with_key(site, user="bob")
    if who == "locked":
        acct = await site.store.get_account("bob")
        await site.store.put_account(acct.changed(status="locked"))
    else:
        await site.store.delete_account("bob")  # the store alone: the credential stays behind
    mark = site.mark()
    assert await site.passkey_sign_in(key) == (403, {"error": message})
    assert site.since(mark) == [("signin_refused", "bob", reason)]
    assert await site.userinfo() is None


async def test_passwordless_off(tmp_path):
    s = await make_site(tmp_path, webauthn="webauthn: {level_user_verified: hardware, passwordless: false}",
                        accounts=(human("alice"),))
    try:
        assert "Passkeys and security keys are not set up here." in await s.page("/oauth2/webauthn/sign_in", 404)
        page = await s.page("/oauth2/sign_in?" + urlencode({"rd": HW_RD}))
        assert "Sign in with a passkey" not in page
        assert await s.post_json("/oauth2/webauthn/sign_in/options", {"csrf": "x"}) == (
            404, {"error": "Passkeys and security keys are not set up here."})
    finally:
        await s.close()


async def test_a_removed_key_no_longer_signs_in(site):
    key = await _with_key(site)
    [cred] = await site.store.webauthn_credentials("alice")
    await site.store.remove_webauthn_credential("alice", cred.id)
    assert await site.passkey_sign_in(key) == (401, {"error": MSG_UNKNOWN})


async def test_the_totp_step_up_page_offers_the_key_too(tmp_path):
    """A level a local TOTP code proves (mfa): the sign-in part's step-up page lists the key's offer."""
    totp = CONFIG.replace('{{name: mfa, acr: ["urn:acr:mfa"]}}', '{{name: mfa, acr: ["urn:acr:mfa"], local_factor: totp}}')
    s = await make_site(tmp_path, accounts=(human("alice"),), config=totp)
    try:
        await s.sign_in()
        r = await s.client.get("/oauth2/start?" + urlencode({"rd": MFA_RD}), allow_redirects=False)
        step_up = "/oauth2/step_up?" + urlencode({"rd": MFA_RD, "level": "mfa"})
        assert (r.status, r.headers["Location"]) == (302, step_up)  # the sign-in part's page (no TOTP yet)
        page = await s.page(step_up)
        ours = "/oauth2/webauthn/step_up?" + urlencode({"rd": MFA_RD, "level": "mfa"})
        assert f'<a class="button" href="{ours.replace("&", "&amp;")}">Use your security key or passkey</a>' in page
        assert "Set up an authenticator app" in page
    finally:
        await s.close()


# --- the administrator's tools --------------------------------------------------------------


async def _token(site, user: str) -> str:
    app = site.client.server.app
    ctx = app[CTX]
    token = (await TokenService(ctx.runtime.config, ctx.runtime.keyring, site.store).issue(OPERATOR, user)).token
    await app[TOKENS].index.refresh(ctx.store, 10.0, force=True)
    return token


async def test_admin_api_lists_and_removes_keys(site):
    key = await _with_key(site)
    [cred] = await site.store.webauthn_credentials("alice")
    root, bob, alice = await _token(site, "root"), await _token(site, "bob"), await _token(site, "alice")

    async def call(method: str, path: str, token: str) -> tuple[int, object]:
        r = await site.client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        text = await r.text()
        return r.status, json.loads(text) if text else None

    st, body = await call("GET", "/api/v1/accounts/alice/webauthn", root)
    assert st == 200 and [(c["id"], c["name"], c["kind"], c["user_verifying"]) for c in body] == [
        (cred.key, "my key", "passkey", True)]
    assert "public_key" not in body[0]
    assert (await call("GET", "/api/v1/accounts/alice/webauthn", alice))[0] == 200  # one's own
    assert await call("GET", "/api/v1/accounts/alice/webauthn", bob) == (
        403, {"error": "forbidden", "error_description": "bob may not read the security keys of alice"})
    assert await call("DELETE", f"/api/v1/accounts/alice/webauthn/{cred.key}", alice) == (
        403, {"error": "forbidden", "error_description": "alice may not remove security keys (admins only)"})
    assert await call("DELETE", "/api/v1/accounts/alice/webauthn/AAAA", root) == (
        404, {"error": "not_found", "error_description": "alice has no such security key or passkey"})
    assert await call("DELETE", "/api/v1/accounts/alice/webauthn/a%20b", root) == (
        400, {"error": "invalid_request", "error_description": "a credential id is base64url, as the list shows it"})
    assert await call("GET", "/api/v1/accounts/Alice!/webauthn", root) == (
        400, {"error": "invalid_request", "error_description": "account names are 1-64 of a-z 0-9 . _ @ + -, or "
                                                               "<source>:<sub> for an upstream identity's account "
                                                               "as listed"})
    mark = site.mark()
    assert await call("DELETE", f"/api/v1/accounts/alice/webauthn/{cred.key}", root) == (204, None)
    assert site.since(mark) == [("webauthn_removed", "alice",
                                 f"'my key' by root (api); key {webauthn_fingerprint(cred.id)}")]
    assert await site.passkey_sign_in(key) == (401, {"error": MSG_UNKNOWN})
    doc = await (await site.client.get("/api/v1/openapi.json")).json()
    assert {"/api/v1/accounts/{name}/webauthn", "/api/v1/accounts/{name}/webauthn/{credential_id}"} <= set(doc["paths"])


def test_cli_lists_and_removes_keys(tmp_path, capsys):
    import asyncio

    from forwardauth.cli import main

    async def setup() -> tuple[SoftAuthenticator, str]:
        s = await make_site(tmp_path, accounts=(human("alice"),))
        try:
            key = await _with_key(s)
            return key, (await s.store.webauthn_credentials("alice"))[0].key
        finally:
            await s.close()

    key, cid = asyncio.run(setup())
    cfg = tmp_path / "forwardauth.yaml"
    cfg.write_text(CONFIG.format(db=tmp_path / "state.db", audit=tmp_path / "audit.log",
                                 webauthn="webauthn: {level_user_verified: hardware}"))
    assert main(["webauthn", "list", "-c", str(cfg), "Alice"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cid}  'my key'  passkey; verifies the user; model ") and "last used -" in out
    assert main(["webauthn", "list", "-c", str(cfg), "alice", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["name"], listed["locked"]) == (cid, "my key", None)
    assert main(["webauthn", "remove", "-c", str(cfg), "alice", "AAAA"]) == 2
    assert "alice has no security key or passkey 'AAAA' (see: forwardauth webauthn list USER)" in \
        capsys.readouterr().err
    assert main(["webauthn", "remove", "-c", str(cfg), "alice"]) == 2
    assert main(["webauthn", "remove", "-c", str(cfg), "alice", cid]) == 0
    assert capsys.readouterr().out == "alice: removed 'my key'\n"
    assert main(["webauthn", "list", "-c", str(cfg), "alice"]) == 0
    assert capsys.readouterr().out == "alice: no security keys or passkeys\n"
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert (lines[-1]["event"], lines[-1]["user"], lines[-1]["reason"]) == (
        "webauthn_removed", "alice", f"'my key' by operator (cli); key {webauthn_fingerprint(key.credentials[0].id)}")
