"""`forwardauth users ...`: the real CLI in a subprocess against a real config and SQLite file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from forwardauth.composition import load_config
from forwardauth.core.runtime import Runtime
from forwardauth.services.passwords import verify_password
from forwardauth.services.regulation import Regulator
from forwardauth.signin.settings import settings
from forwardauth.signin.totp import SecretBox
from forwardauth.state.sqlite import SQLiteStore

CONFIG = """
server: {{listen: 127.0.0.1:4180, public_url: https://auth.example.com}}
session: {{cookie_name: fa, secure: false}}
keys: {{file: keys.json}}
state: sqlite://state.db
levels:
  - {{name: password}}
  - {{name: mfa, local_factor: totp}}
local:
  scrypt: {{log_n: 10}}
  audit: audit.log
  totp: {{issuer: Example Co}}
  regulation: {{max_failures: 2}}
policy: {{rules: []}}
"""


def users(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forwardauth", "users", *args, "-c", str(cfg)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def ok(cfg: Path, *args: str, stdin: str | None = None) -> str:
    p = users(cfg, *args, stdin=stdin)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def fails(cfg: Path, *args: str, stdin: str | None = None, code: int = 2) -> str:
    p = users(cfg, *args, stdin=stdin)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    return p.stderr


def account(cfg: Path, name: str):
    async def go():
        s = SQLiteStore(str(cfg.parent / "state.db"))
        try:
            return await s.get_account(name), (await s.revocations(time.time())).epochs.get(name)
        finally:
            await s.close()

    return asyncio.run(go())


def audit(cfg: Path) -> list[dict]:
    return [json.loads(x) for x in (cfg.parent / "audit.log").read_text().splitlines()]


@pytest.fixture
def cfg(tmp_path):
    subprocess.run([sys.executable, "-m", "forwardauth", "keys", "generate", "-o", str(tmp_path / "keys.json")],
                   check=True, capture_output=True)
    path = tmp_path / "forwardauth.yaml"
    path.write_text(CONFIG.format())
    return path


def test_add_list_and_the_password_works(cfg):
    assert ok(cfg, "add", "Alice", "--groups", "admins,ops", "--email", "a@example.com", "--display-name", "Alice L",
              "--password-stdin", stdin="alice-password-1\n") == "alice: created (human; groups: admins, ops)\n"
    a, _ = account(cfg, "alice")
    assert a.email == "a@example.com" and a.display_name == "Alice L" and a.groups == ("admins", "ops")
    assert a.password_hash.startswith("scrypt$n=2^10,r=8,p=1$") and verify_password("alice-password-1",
                                                                                      a.password_hash)
    assert ok(cfg, "add", "robot", "--system", "--groups", "bots") == "robot: created (system; groups: bots)\n"
    assert ok(cfg, "list") == ("USER                     KIND    STATUS  TOTP  GROUPS\n"
                               "alice                    human   active  no    admins,ops\n"
                               "robot                    system  active  no    bots\n")
    rows = json.loads(ok(cfg, "list", "--json"))
    assert [(r["username"], r["password"], r["totp"]) for r in rows] == [("alice", True, False),
                                                                        ("robot", False, False)]
    assert "scrypt" not in ok(cfg, "list", "--json")
    assert [(x["event"], x["user"], x["reason"]) for x in audit(cfg)] == [
        ("account_created", "alice", "human account by operator (cli)"),
        ("account_created", "robot", "system account by operator (cli)")]
    assert "alice-password-1" not in (cfg.parent / "audit.log").read_text()


def test_add_refusals(cfg):
    ok(cfg, "add", "alice", "--password-stdin", stdin="alice-password-1\n")
    assert fails(cfg, "add", "alice", "--password-stdin", stdin="another-password\n") == (
        "forwardauth: account 'alice' exists (change it with: forwardauth users passwd|groups)\n")
    assert fails(cfg, "add", "bob", "--password-stdin", stdin="short\n") == (
        "forwardauth: the password must have at least 10 characters (local.min_password_length)\n")
    assert fails(cfg, "add", "bob", stdin="") == (
        "forwardauth: no terminal to ask for the password: use --password-stdin or --generate\n")
    assert fails(cfg, "add", "robot", "--system", "--generate") == (
        "forwardauth: system accounts have no password (they use API tokens)\n")
    assert fails(cfg, "add", "bob", "--groups", "a b", "--generate") == (
        "forwardauth: --groups: invalid group name 'a b': 1-64 of A-Z a-z 0-9 _ . : @ + -\n")
    err = fails(cfg, "add", "no spaces", "--generate")
    assert err.endswith("argument user: username must be 1-64 of a-z 0-9 . _ @ + - and start with a letter or "
                        "digit\n")
    assert fails(cfg, "passwd", "ghost", "--generate") == "forwardauth: no account 'ghost' (see: forwardauth users list)\n"


def test_generated_password_is_shown_once_and_works(cfg):
    out = ok(cfg, "add", "bob", "--generate")
    lines = out.splitlines()
    assert lines[0] == "bob: password set. It is shown only now:"
    pw = lines[1].strip()
    assert verify_password(pw, account(cfg, "bob")[0].password_hash)
    assert pw not in (cfg.parent / "audit.log").read_text()


def test_passwd_groups_lock_unlock_delete_end_sessions(cfg):
    ok(cfg, "add", "alice", "--password-stdin", stdin="alice-password-1\n")
    ok(cfg, "add", "robot", "--system")
    t0 = time.time()
    assert ok(cfg, "passwd", "alice", "--password-stdin", stdin="alice-password-2\n") == (
        "alice: password changed; existing sessions are signed out\n")
    a, epoch = account(cfg, "alice")
    assert verify_password("alice-password-2", a.password_hash) and not verify_password("alice-password-1",
                                                                                        a.password_hash)
    assert epoch is not None and epoch >= t0
    assert fails(cfg, "passwd", "robot", "--generate") == (
        "forwardauth: robot is a system account: it cannot have a password\n")
    assert ok(cfg, "groups", "alice", "admins,ops") == (
        "alice: groups: admins, ops (signed out, to pick them up at next sign-in)\n")
    assert ok(cfg, "groups", "alice", "--add", "dev", "--remove", "ops") == (
        "alice: groups: admins, dev (signed out, to pick them up at next sign-in)\n")
    assert ok(cfg, "groups", "alice", "--add", "dev") == "alice: groups unchanged: admins, dev\n"
    assert ok(cfg, "lock", "alice") == "alice: locked; existing sessions are signed out\n"
    assert account(cfg, "alice")[0].status == "locked"

    # a ban for failed attempts, lifted by unlock
    conf = load_config(cfg)

    async def ban_and_check(check_only: bool = False) -> bool:
        s = SQLiteStore(str(cfg.parent / "state.db"))
        try:
            reg = Regulator(s, settings(conf).regulation)
            if not check_only:
                for _ in range(2):
                    await reg.failed("alice", "192.0.2.1", time.time())
            return (await reg.check("alice", "198.51.100.1", time.time())).banned
        finally:
            await s.close()

    assert asyncio.run(ban_and_check()) is True
    assert ok(cfg, "unlock", "alice") == "alice: unlocked (and any ban for failed attempts lifted)\n"
    assert account(cfg, "alice")[0].status == "active"
    assert asyncio.run(ban_and_check(check_only=True)) is False

    assert ok(cfg, "delete", "alice") == "alice: deleted; existing sessions and tokens are revoked\n"
    assert account(cfg, "alice")[0] is None
    assert [x["event"] for x in audit(cfg)] == ["account_created", "account_created", "account_updated",
                                               "account_updated", "account_updated", "account_locked",
                                               "account_unlocked", "account_deleted"]
    assert "alice-password" not in (cfg.parent / "audit.log").read_text()


def test_totp_enroll_prints_uri_and_qr_and_reset(cfg):
    ok(cfg, "add", "alice", "--password-stdin", stdin="alice-password-1\n")
    out = ok(cfg, "totp", "enroll", "alice")
    lines = out.splitlines()
    assert lines[0] == "alice: TOTP set up. Scan this with the authenticator app, or enter the key by hand."
    key = lines[1].split("key: ")[1]
    uri = urlsplit(lines[2].split("uri: ")[1])
    assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/Example%20Co:alice")
    assert parse_qs(uri.query)["secret"] == [key]
    assert any(ch in out for ch in "\u2580\u2584\u2588")  # the QR code, in block characters
    a, _ = account(cfg, "alice")
    assert key not in a.totp_secret_enc
    ring = Runtime.build(load_config(cfg)).keyring
    assert SecretBox(ring).open("alice", a.totp_secret_enc) == key
    assert fails(cfg, "totp", "enroll", "alice") == (
        "forwardauth: alice already has TOTP (remove it first: forwardauth users totp reset alice, or pass --replace)\n")
    out2 = ok(cfg, "totp", "enroll", "alice", "--replace", "--no-qr")
    assert len(out2.splitlines()) == 3 and out2.splitlines()[1] != lines[1]
    assert ok(cfg, "totp", "reset", "alice") == (
        "alice: TOTP removed; the next page that needs it will guide them through setting it up again\n")
    assert account(cfg, "alice")[0].totp_secret_enc is None
    assert ok(cfg, "totp", "reset", "alice") == "alice: has no TOTP; nothing to reset\n"
    text = (cfg.parent / "audit.log").read_text()
    assert key not in text
    assert [x["event"] for x in audit(cfg)][-3:] == ["totp_enrolled", "totp_enrolled", "totp_reset"]


def test_memory_state_is_refused(tmp_path):
    subprocess.run([sys.executable, "-m", "forwardauth", "keys", "generate", "-o", str(tmp_path / "keys.json")],
                   check=True, capture_output=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format().replace("state: sqlite://state.db", "state: memory://"))
    assert fails(cfg, "list") == "forwardauth: state memory:// lives inside one server process; the CLI cannot reach it\n"


def test_an_upstream_identitys_account_can_be_managed_not_made(cfg):
    """An upstream user who set up TOTP has an account "oidc:<sub>" (sub kept exactly): the CLI can
    reset its TOTP, lock, unlock and delete it, refuses a password for it, and never makes one."""
    ring = Runtime.build(load_config(cfg)).keyring

    async def make():
        from forwardauth.state.records import Account

        s = SQLiteStore(str(cfg.parent / "state.db"))
        try:
            await s.add_account(Account("oidc:AbC-123", totp_secret_enc=SecretBox(ring).seal("oidc:AbC-123", "A" * 32),
                                        created=1, updated=1))
        finally:
            await s.close()

    asyncio.run(make())
    assert "oidc:AbC-123" in ok(cfg, "list")
    before = time.time()
    assert ok(cfg, "totp", "reset", "oidc:AbC-123") == (
        "oidc:AbC-123: TOTP removed; the next page that needs it will guide them through setting it up again\n")
    acct, epoch = account(cfg, "oidc:AbC-123")
    assert acct.totp_secret_enc is None and epoch >= before
    assert account(cfg, "AbC-123")[1] >= before  # the upstream sessions (sub "AbC-123") end too
    assert fails(cfg, "passwd", "oidc:AbC-123", "--password-stdin", stdin="some-password-1\n") == (
        "forwardauth: oidc:AbC-123 holds the second factor of an upstream identity: it has no password\n")
    assert ok(cfg, "lock", "oidc:AbC-123").startswith("oidc:AbC-123: locked")
    assert account(cfg, "oidc:AbC-123")[0].status == "locked"
    assert ok(cfg, "unlock", "oidc:AbC-123").startswith("oidc:AbC-123: unlocked")
    assert ok(cfg, "delete", "oidc:AbC-123") == "oidc:AbC-123: deleted; existing sessions and tokens are revoked\n"
    assert account(cfg, "oidc:AbC-123")[0] is None
    assert [(x["event"], x["user"]) for x in audit(cfg)] == [
        ("totp_reset", "oidc:AbC-123"), ("account_locked", "oidc:AbC-123"), ("account_unlocked", "oidc:AbC-123"),
        ("account_deleted", "oidc:AbC-123")]
    # new accounts keep the strict rules; odd upstream names are refused with the rule
    err = fails(cfg, "add", "oidc:new", "--password-stdin", stdin="some-password-1\n")
    assert "username must be 1-64 of a-z 0-9 . _ @ + - and start with a letter or digit" in err
    for bad in ("oidc:", ":abc", "OIDC:abc", "oidc:a b", "oidc:" + "x" * 300):
        err = fails(cfg, "delete", bad)
        assert "an upstream identity's account is <source>:<sub>, as `forwardauth users list` shows it" in err, bad
    assert fails(cfg, "delete", "oidc:nobody") == (
        "forwardauth: no account 'oidc:nobody' (see: forwardauth users list)\n")
