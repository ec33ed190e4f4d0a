"""The CLI, called in process through main(argv): exit codes and exact output."""

import json
import os
import stat

import pytest

from forwardauth.cli import main
from forwardauth.composition import load_config
from forwardauth.core.keyring import KeyRing
from forwardauth.core.runtime import Runtime

CONFIG = """
server: {{listen: 127.0.0.1:4180, public_url: https://auth.example.com}}
session: {{cookie_name: fa, secure: false}}
keys: {{file: keys.json}}
state: sqlite://state.db
levels:
  - {{name: password, acr: [urn:p]}}
  - {{name: mfa, acr: [urn:m]}}
policy:
  rules:
    - {{name: public, hosts: [app.example.com], paths: [/public/], allow: anonymous}}
    - {{name: admin, hosts: ["*.example.com"], paths: [/admin/], level: mfa, max_age: 15m, groups: [admins]}}
    - {{name: app, hosts: [app.example.com], level: password}}
{extra}"""


@pytest.fixture
def cfg(tmp_path):
    assert main(["keys", "generate", "-o", str(tmp_path / "keys.json")]) == 0
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG.format(extra=""))
    return p


def test_check_ok(cfg, capsys):
    assert main(["check", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out == f"{cfg}: ok (2 levels, 3 rules, default deny)\n"


def test_check_reports_every_error(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(CONFIG.format(extra="    - {name: x, level: root, max_age: never}\n"))
    assert main(["check", "-c", str(p)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"{p}: policy.rules[3] (x).level: unknown level 'root' (levels: password, mfa)" in err
    assert f"{p}: policy.rules[3] (x).max_age: not a duration: 'never' (use e.g. 90s, 15m, 12h, 30d)" in err


def test_check_missing_key_ring(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG.format(extra=""))
    assert main(["check", "-c", str(p)]) == 1
    assert "key ring file not found" in capsys.readouterr().err


def test_explain_text(cfg, capsys):
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/admin/x", "--user", "bob",
                 "--groups", "admins", "--level", "mfa", "--proven-ago", "20m"]) == 0
    out = capsys.readouterr().out
    assert "rules:    3 of 3 apply to host app.example.com" in out
    assert "  skipped rules[0] (public): path '/admin/x' matches none of ['/public/']" in out
    assert "matched:  rules[1] (admin)" in out
    assert "outcome:  insufficient_level: rules[1] (admin) needs level mfa proven within 15m" in out


def test_explain_json(cfg, capsys):
    assert main(["explain", "-c", str(cfg), "--url", "https://other.test/", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matched"] is None and out["outcome"] == "denied" and out["candidates"] == 0
    assert out["reason"] == "no rule matched; policy.default is deny"


@pytest.mark.parametrize("url,why", [
    ("https://app.example.com/public/..%2fadmin/x", "ambiguous path: dot segment"),
    ("https://app.example.com/public/x#/../../admin/x", "ambiguous path: '#' in the path"),
])
def test_explain_shows_a_refused_path(cfg, capsys, url, why):
    assert main(["explain", "-c", str(cfg), "--url", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"outcome:  refused (400 Bad Request): {why}. An app behind the proxy")
    assert main(["explain", "-c", str(cfg), "--url", url, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["outcome"], got["status"], got["reason"]) == ("refused", 400, why)


def test_explain_shows_every_reading(cfg, capsys):
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/ADMIN/x", "--user", "bob",
                 "--groups", "admins", "--level", "password"]) == 0
    out = capsys.readouterr().out
    assert "readings: an app could route this request as any of these; the strictest answer wins" in out
    assert "  GET /admin/x: rules[1] (admin)" in out
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/ADMIN/x", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in got["readings"]] == ["/ADMIN/x", "/admin/x"]
    assert got["readings"][1]["matched"] == {"rule": 1, "name": "admin"}


def test_explain_bad_input(cfg, capsys):
    assert main(["explain", "-c", str(cfg), "--url", "app.example.com/x"]) == 2
    assert capsys.readouterr().err == ("forwardauth: --url/--method/--client: original URL must be an absolute "
                                       "http(s) URL\n")
    assert main(["explain", "-c", str(cfg), "--url", "https://a.test/", "--user", "x", "--level", "god"]) == 2
    assert "--level: unknown level 'god' (levels: password, mfa)" in capsys.readouterr().err


def test_explain_checks_a_cookie_as_the_server_does(cfg, capsys):
    rt = Runtime.build(load_config(cfg))
    now = __import__("time").time()
    value = rt.codec.seal(rt.codec.new("bob", "mfa", now, groups=("admins",)))
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/admin/x", "--cookie", value]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "credential: cookie: ok"
    assert out[2] == "identity: bob (level mfa, proven just now; groups: admins)"
    assert "outcome:  allow: rules[1] (admin) is satisfied at level mfa" in out
    assert out[out.index("answer:   200 from /auth/nginx") + 1] == "  X-Auth-Request-User: bob"
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/x", "--cookie", value[:-4] + "AAAA",
                 "--proxy", "traefik"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["credential: cookie: tampered", "identity: not signed in"]
    assert "answer:   302 from /auth/traefik" in out


def test_explain_credential_errors(cfg, capsys):
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/x", "--user", "bob",
                 "--cookie", "x"]) == 2
    assert capsys.readouterr().err == ("forwardauth: --user makes up a session: give it, or --cookie/--token, "
                                       "not both\n")
    cfg.write_text(cfg.read_text().replace("state: sqlite://state.db", "state: memory://"))
    assert main(["explain", "-c", str(cfg), "--url", "https://app.example.com/x", "--token", "fa1_x"]) == 2
    assert capsys.readouterr().err == ("forwardauth: state memory:// lives inside one server process: --cookie "
                                       "and --token cannot see its revocations\n")


def test_keys_generate_rotate_list(tmp_path, capsys):
    f = tmp_path / "k.json"
    assert main(["keys", "generate", "-o", str(f)]) == 0
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    first = KeyRing.load(f).current.id
    assert main(["keys", "generate", "-o", str(f)]) == 2
    assert "exists; use --rotate" in capsys.readouterr().err
    assert main(["keys", "generate", "--rotate", str(f)]) == 0
    ring = KeyRing.load(f)
    assert len(ring.keys) == 2 and ring.keys[1].id == first and ring.current.id != first
    capsys.readouterr()
    assert main(["keys", "list", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{ring.current.id}\tseals+opens") and lines[1].startswith(f"{first}\topens")
    # Never the key material: no secret (or private key) in any encoding appears in the listing.
    from forwardauth.core.keyring import b64e

    text = "\n".join(lines)
    for k in ring.keys:
        assert b64e(k.secret) not in text and k.secret.hex() not in text
    saved = json.loads(f.read_text())
    for k in saved["keys"] + saved["signing"]:
        material = k.get("secret") or k["private"]
        assert material not in text and material[:16] not in text
    assert len(lines) == len(saved["keys"]) + len(saved["signing"])


def test_session_issue_and_revoke(cfg, capsys):
    assert main(["session", "issue", "-c", str(cfg), "--user", "alice", "--groups", "a,b", "--level", "mfa"]) == 0
    value = capsys.readouterr().out.strip()
    rt = Runtime.build(load_config(cfg))
    opened = rt.codec.open(value, __import__("time").time())
    assert opened.reason == "ok" and opened.session.groups == ("a", "b") and opened.session.level == "mfa"
    assert main(["session", "revoke", "-c", str(cfg), "--user", "alice"]) == 0
    out, err = capsys.readouterr()
    assert "alice: sessions issued before" in out
    line = __import__("json").loads(err.strip().splitlines()[-1])  # the audit log is stdout: stderr for a command
    assert (line["event"], line["user"], line["reason"]) == ("session_revoked", "alice", "forwardauth session revoke")
    import sqlite3

    row = sqlite3.connect(cfg.parent / "state.db").execute("SELECT epoch FROM epochs WHERE user='alice'").fetchone()
    assert row[0] > opened.session.iat


def test_session_issue_unknown_level(cfg, capsys):
    assert main(["session", "issue", "-c", str(cfg), "--user", "a", "--level", "root"]) == 2
    assert capsys.readouterr().err == "forwardauth: --level: unknown level 'root' (levels: password, mfa)\n"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("serve", "check", "explain", "keys", "session"):
        assert cmd in out


@pytest.mark.parametrize("extra,expected", [
    ("    - {name: x, level: [mfa]}\n",
     "policy.rules[3] (x).level: must be one level name (levels: password, mfa), got ['mfa']"),
    ("    - {name: x, level: {a: 1}}\n",
     "policy.rules[3] (x).level: must be one level name (levels: password, mfa), got {'a': 1}"),
    ("    - {name: x, methods_levels: {GET: [mfa]}}\n",
     "policy.rules[3] (x).methods_levels.GET: must be one level name, got ['mfa']"),
    ("    - {name: x, paths: ['/x[z-a]'], level: mfa}\n",
     "policy.rules[3] (x).paths[0]: invalid glob '/x[z-a]': bad character range z-a"),
    ("    - {name: x, paths: ['/a[]'], level: mfa}\n",
     "policy.rules[3] (x).paths[0]: invalid glob '/a[]': unterminated character set"),
    ("    -\n", "policy.rules[3]: empty rule (a `-` with nothing after it)"),
])
def test_check_names_file_rule_and_field_without_traceback(cfg, capsys, extra, expected):
    cfg.write_text(CONFIG.format(extra=extra))
    assert main(["check", "-c", str(cfg)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"{cfg}: {expected}\n" and captured.out == ""


@pytest.mark.parametrize("created,shown", [("\"yesterday\"", "'yesterday'"), ("[1]", "[1]"), ("-5", "-5"),
                                           ("true", "True")])
def test_check_reports_a_bad_created_in_the_key_file(cfg, capsys, created, shown):
    keys = cfg.parent / "keys.json"
    data = json.loads(keys.read_text())
    kid = data["keys"][0]["id"]
    keys.write_text(keys.read_text().replace(f'"created": {data["keys"][0]["created"]}', f'"created": {created}', 1))
    assert main(["check", "-c", str(cfg)]) == 1
    assert capsys.readouterr().err == (f"{keys}: keys[0] (id {kid!r}): created must be a time in unix seconds, "
                                       f"got {shown}\n")


LIMITS = ("--user, --email and --name hold at most 1024 characters each, --groups at most 256 groups, "
          "and the sealed cookie at most 3800 bytes\n")


@pytest.mark.parametrize("args,reason", [
    (["--user", "u" * 1025], "malformed"),
    (["--user", "a", "--email", "e" * 1025], "malformed"),
    (["--user", "a", "--groups", ",".join(f"g{i}" for i in range(257))], "malformed"),
    (["--user", "a", "--groups", ",".join(f"group-{i:05d}" for i in range(200))], "oversized"),
    (["--user", "a", "--groups", ",".join(f"group-name-{i:05d}" for i in range(256))], "too large"),
])
def test_session_issue_refuses_a_cookie_that_would_never_open(cfg, capsys, args, reason):
    assert main(["session", "issue", "-c", str(cfg), "--level", "password", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"forwardauth: this session does not fit in a cookie ({reason}): " + LIMITS


def test_session_issue_at_the_limits_opens(cfg, capsys):
    assert main(["session", "issue", "-c", str(cfg), "--level", "password", "--user", "u" * 1024]) == 0
    value = capsys.readouterr().out.strip()
    assert Runtime.build(load_config(cfg)).codec.open(value, __import__("time").time()).session.sub == "u" * 1024


def _unopenable_state(cfg):
    blocker = cfg.parent / "blocker"
    blocker.write_text("a file where a directory should be\n")
    cfg.write_text(cfg.read_text().replace("state: sqlite://state.db", "state: sqlite://blocker/sub/state.db"))
    return blocker / "sub"


def test_session_revoke_with_an_unopenable_state_store(cfg, capsys):
    where = _unopenable_state(cfg)
    assert main(["session", "revoke", "-c", str(cfg), "--user", "alice"]) == 2
    assert capsys.readouterr().err == (f"forwardauth: state store: sqlite state {where}/state.db: cannot create "
                                       f"its directory {where}: Not a directory\n")


def test_users_with_an_unopenable_state_store(cfg, capsys):
    where = _unopenable_state(cfg)
    assert main(["users", "list", "-c", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"forwardauth: state store: sqlite state {where}/state.db: cannot create "
                                       f"its directory {where}: Not a directory\n")


def test_serve_with_an_unopenable_state_store_exits_1_with_one_line(cfg, capsys):
    where = _unopenable_state(cfg)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.write_text(cfg.read_text().replace("127.0.0.1:4180", f"127.0.0.1:{port}"))
    assert main(["serve", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = json.loads(err.strip().splitlines()[-1])
    assert (line["level"], line["msg"]) == ("error", f"cannot start: state store: sqlite state {where}/state.db: "
                                                     f"cannot create its directory {where}: Not a directory")


def test_check_warns_about_a_level_nothing_proves(cfg, capsys):
    cfg.write_text(CONFIG.format(extra="").replace("  - {name: mfa, acr: [urn:m]}\n",
                                                   "  - {name: mfa, acr: [urn:m]}\n  - {name: hardware}\n"))
    assert main(["check", "-c", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{cfg}: ok (3 levels, 3 rules, default deny)\n"
    assert captured.err == (f"warning: {cfg}: levels[2] (hardware): lists no acr, amr or local_factor, so no "
                            "sign-in at the provider and no second factor proves it (only local.password_level, "
                            "tokens or `forwardauth session issue` grant it)\n")
