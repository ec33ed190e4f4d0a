"""Keys have roles: retiring a key's cookies keeps its data at rest (TOTP
secrets, database credentials, token roots) working; `keys reseal` seals the
data anew under the first key; `keys remove` says exactly what removing a
key retires, and refuses while something stored still needs it.

Issue 14: removing an old key retired far more than its cookies: tokens
minted before the rotation stopped working ("unknown key"), TOTP secrets
sealed under it made /oauth2/totp answer 500, and service accounts'
database credentials no longer opened; none of it was said or documented.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from urllib.parse import urlencode

import pytest
from test_local_signin import ADMIN_RD, SECRET, error_of, human, make_site

from forwardauth.composition import load_config
from forwardauth.core import keyring
from forwardauth.core.runtime import Runtime
from forwardauth.services.keys import dbcreds_sealer
from forwardauth.signin.totp import SecretBox, code_at, current_step
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.tokens import macaroon as mac
from harness.tokens import write_config


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forwardauth", *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def ok(*args: str, stdin: str = "") -> str:
    p = run(*args, stdin=stdin)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def ring_of(cfg_path) -> keyring.KeyRing:
    return Runtime.build(load_config(cfg_path)).keyring


def stored(db, fn):
    async def go():
        s = SQLiteStore(str(db))
        try:
            return await fn(s)
        finally:
            await s.close()

    return asyncio.run(go())


def test_retire_reseal_remove(tmp_path):
    cfg = write_config(tmp_path, 4180, f"sqlite:///{tmp_path / 'state.db'}", extra={"local": {
        "audit": str(tmp_path / "audit.log"), "scrypt": {"log_n": 10}}})
    c = str(cfg)
    keys = str(tmp_path / "keys.json")
    old = keyring.KeyRing.load(keys).current.id
    ok("accounts", "create", "-c", c, "svc", "--kind", "system")
    token = ok("tokens", "issue", "-c", c, "--account", "svc", "--name", "nightly").strip()
    token_id = json.loads(ok("tokens", "inspect", token))["token_id"]
    ok("dbcreds", "set", "-c", c, "svc", "--host", "db", "--database", "d", "--username", "u", "--password-stdin",
       stdin="pw-123\n")
    ok("users", "add", "-c", c, "carol", "--generate")
    ok("users", "totp", "enroll", "-c", c, "carol", "--no-qr")
    cookie = ok("session", "issue", "-c", c, "--user", "carol", "--level", "password").strip()

    ok("keys", "generate", "--rotate", keys)
    ring = ring_of(cfg)
    new = ring.current.id
    listed = ok("keys", "list", keys).splitlines()
    assert listed[0].startswith(f"{new}\tseals+opens cookies+data\tcreated ")
    assert listed[1].startswith(f"{old}\topens cookies+data\tcreated ")
    # A rotation signs nobody out and keeps every token and secret.
    assert Runtime.build(load_config(cfg)).codec.open(cookie, time.time()).session is not None
    mac.verify_signature(ring, mac.deserialize(token))

    out = ok("keys", "retire", keys, old)
    assert out.startswith(f"{keys}: {old} no longer opens cookies once every process reloads (SIGHUP)")
    ring = ring_of(cfg)
    assert ring.get(old).roles == ("data",)
    assert ok("keys", "list", keys).splitlines()[1].startswith(f"{old}\topens data\tcreated ")
    opened = Runtime.build(load_config(cfg)).codec.open(cookie, time.time())
    assert (opened.session, opened.reason) == (None, "key retired for cookies")  # only its cookies are retired
    mac.verify_signature(ring, mac.deserialize(token))  # tokens minted under it still work
    acct = stored(tmp_path / "state.db", lambda s: s.get_account("carol"))
    assert acct.totp_secret_enc.startswith(old + ".")
    SecretBox(ring).open("carol", acct.totp_secret_enc)  # TOTP secrets still open
    creds = stored(tmp_path / "state.db", lambda s: s.get_dbcreds("svc"))
    assert json.loads(dbcreds_sealer(ring).open(creds.sealed))["creds"]["password"] == "pw-123"

    p = run("keys", "remove", "-c", c, old)
    assert p.returncode == 2
    assert p.stdout == (f"removing {old} retires:\n"
                        "  cookies: none (retired already)\n"
                        f"  API tokens minted under it, still valid: 1 ({token_id}; issue new ones)\n"
                        "  TOTP secrets sealed under it: 1 (carol)\n"
                        "  database credentials sealed under it: 1 (svc)\n")
    assert p.stderr == (f"forwardauth: not removed: 3 things stored still need {old} (`keys reseal` seals TOTP "
                        "secrets and database credentials anew; tokens must be issued again); --force removes it "
                        "anyway\n")
    assert ring_of(cfg).get(old) is not None

    assert ok("keys", "reseal", "-c", c) == f"sealed anew under {new}: 1 TOTP secrets, 1 database credentials\n"
    p = run("keys", "remove", "-c", c, old)
    assert p.returncode == 2 and "  TOTP secrets sealed under it: 0\n  database credentials sealed under it: 0\n" \
        in p.stdout and "not removed: 1 things stored still need" in p.stderr
    out = ok("keys", "remove", "-c", c, old, "--force")
    assert out.endswith(f"{keys}: {old} removed; it takes effect when every process reloads (SIGHUP)\n")
    ring = ring_of(cfg)
    assert ring.get(old) is None
    with pytest.raises(mac.TokenError, match="unknown key"):  # exactly what it said it retires
        mac.verify_signature(ring, mac.deserialize(token))
    acct = stored(tmp_path / "state.db", lambda s: s.get_account("carol"))
    SecretBox(ring).open("carol", acct.totp_secret_enc)
    creds = stored(tmp_path / "state.db", lambda s: s.get_dbcreds("svc"))
    assert json.loads(dbcreds_sealer(ring).open(creds.sealed))["creds"]["password"] == "pw-123"
    # the first key is never retired or removed
    p = run("keys", "remove", "-c", c, new)
    assert (p.returncode, p.stderr) == (2, f"forwardauth: {new} is the first key (it seals): rotate first "
                                           "(keys generate --rotate)\n")


def test_key_ring_roles_are_checked():
    base = keyring.generate().keys[0]
    e = {"id": "k2", "secret": keyring.b64e(b"x" * 32)}
    first = {"id": base.id, "secret": keyring.b64e(base.secret)}
    ring = keyring.KeyRing.from_entries([first, {**e, "roles": ["data"]}], "keys")
    assert ring.opener("k2", "data") is not None and ring.opener("k2", "cookies") is None
    with pytest.raises(keyring.KeyRingError, match=r"^keys\[1\] \(id 'k2'\): roles must be a non-empty list of "
                                                   r"some of cookies, data$"):
        keyring.KeyRing.from_entries([first, {**e, "roles": ["everything"]}], "keys")
    with pytest.raises(keyring.KeyRingError, match=r"^key 'k2' is the first key \(it seals\): it must have every "
                                                   r"role \(cookies, data\)$"):
        keyring.KeyRing.from_entries([{**e, "roles": ["data"]}, first], "keys")
    assert json.loads(ring.to_json())["keys"][1]["roles"] == ["data"]
    assert "roles" not in json.loads(ring.to_json())["keys"][0]


async def test_a_totp_secret_under_a_removed_key_is_a_clear_403_not_a_500(tmp_path):
    other = keyring.KeyRing((keyring.new_key(),))  # a key this server does not hold
    carol = human("carol", totp_secret_enc=SecretBox(other).seal("carol", SECRET))
    site = await make_site(tmp_path, accounts=(carol,))
    try:
        assert (await site.sign_in(username="carol", rd=ADMIN_RD)).status == 303
        fields = await site.form("/oauth2/totp?" + urlencode({"rd": ADMIN_RD}))
        mark = site.mark()
        r = await site.post("/oauth2/totp", {**fields, "code": code_at(SECRET, current_step(time.time()))})
        assert r.status == 403
        assert error_of(await r.text()) == ("Your authenticator app cannot be checked here any more: this server no "
                                            "longer holds the key it was set up with. Ask an administrator to reset "
                                            "it, then set it up again.")
        line = site.one_new_line(mark)
        assert (line["event"], line["user"], line["reason"]) == ("totp_failed", "carol", "secret_unreadable")
    finally:
        await site.client.close()
