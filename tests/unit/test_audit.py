"""The audit log: one JSON line per event, fixed fields, never a secret."""

import json
import os
import subprocess
import sys

import pytest

from forwardauth.services.audit import EVENTS, FIELDS, AuditLog, request_id

SECRETS = ["hunter2-password", "123456", "JBSWY3DPEHPK3PXP", "k1.c2VhbGVkLWNvb2tpZQ", "eyJhbGciOiJFUzI1NiJ9.tok"]


def test_every_event_line_has_the_fields_in_order(tmp_path):
    log = AuditLog(str(tmp_path / "audit.log"))
    for ev in sorted(EVENTS):
        log.emit(ev, user="alice", client="192.0.2.1", host="app.example.com", path="/admin/", level="mfa",
                 reason="r", request_id="abc", now=1_700_000_000.5)
    log.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == len(EVENTS)
    for ev, line in zip(sorted(EVENTS), lines, strict=True):
        d = json.loads(line)
        assert tuple(d) == FIELDS
        assert d["event"] == ev and d["time"] == "2023-11-14T22:13:20.500Z"


def test_no_secret_in_any_event_line(tmp_path):
    """Secrets that reach the places an event takes them from (a URL's query, a user
    name typed into the wrong box is still a user name) never show up in any line."""
    log = AuditLog(str(tmp_path / "audit.log"))
    for ev in sorted(EVENTS):
        line = log.emit(ev, user="alice", client="192.0.2.1", host="app.example.com",
                        path="/cb?code=123456&token=eyJhbGciOiJFUzI1NiJ9.tok#k1.c2VhbGVkLWNvb2tpZQ",
                        level="password", reason="wrong_password", request_id="r1")
        for s in SECRETS:
            assert s not in line, (ev, s)
    log.close()
    text = (tmp_path / "audit.log").read_text()
    for s in SECRETS:
        assert s not in text
    assert all(json.loads(x)["path"] == "/cb" for x in text.splitlines())


def test_there_is_no_field_for_a_secret():
    log = AuditLog("stdout")
    for name in ("password", "code", "secret", "cookie", "token", "extra"):
        with pytest.raises(TypeError):
            log.emit("signin_failed", **{name: "x"})


def test_unknown_event_is_refused():
    with pytest.raises(ValueError, match="^unknown audit event 'logged_in'$"):
        AuditLog("stdout").emit("logged_in")


def test_long_values_are_cut_and_control_characters_stay_inside_json(tmp_path):
    log = AuditLog(str(tmp_path / "a.log"))
    line = log.emit("signin_failed", user="x" * 2000, reason="line1\nline2\r\x00")
    log.close()
    assert "\n" not in line and len(json.loads(line)["user"]) == 512
    assert json.loads(line)["reason"] == "line1\nline2\r\x00"
    assert (tmp_path / "a.log").read_text().count("\n") == 1


def test_file_is_appended_with_private_mode(tmp_path):
    p = tmp_path / "a.log"
    for i in range(2):
        log = AuditLog(str(p))
        log.emit("signout", user=f"u{i}")
        log.close()
    assert [json.loads(x)["user"] for x in p.read_text().splitlines()] == ["u0", "u1"]
    assert oct(os.stat(p).st_mode & 0o777) == "0o640"


def test_stdout_target():
    code = ("from forwardauth.services.audit import AuditLog; AuditLog('stdout').emit('signout', user='bob', now=0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == ('{"time":"1970-01-01T00:00:00.000Z","event":"signout","user":"bob","client":null,"host":null,'
                   '"path":null,"level":null,"reason":null,"request_id":null}\n')


def _full_disk(monkeypatch, room: int = 0):
    """Writes fail like a full disk after `room` more bytes (a short write takes what fits)."""
    import errno

    import forwardauth.services.audit as audit_mod

    left = [room]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    monkeypatch.setattr(audit_mod, "_write_fd", write)
    return left


def test_write_failure_does_not_raise(tmp_path, capsys, monkeypatch):
    log = AuditLog(str(tmp_path / "a.log"))
    _full_disk(monkeypatch)
    log.emit("signout", user="u")
    assert "audit log" in capsys.readouterr().err and log.lost == 1
    log.close()


@pytest.mark.parametrize("headers, kept", [
    ({"X-Request-Id": "abc-123_x.y:z"}, True),
    ({"X-Request-Id": "has space"}, False),
    ({"X-Request-Id": "x" * 200}, False),
    ({}, False),
])
def test_request_id(headers, kept):
    rid = request_id(headers)
    if kept:
        assert rid == headers["X-Request-Id"]
    else:
        assert len(rid) == 16 and rid != headers.get("X-Request-Id")


def test_background_lines_are_written_by_flush_and_close(tmp_path):
    log = AuditLog(str(tmp_path / "a.log"))
    for i in range(50):
        log.emit("decision_denied", background=True, user=f"u{i}", now=0)
    assert log.flush()
    assert [json.loads(x)["user"] for x in (tmp_path / "a.log").read_text().splitlines()] == [
        f"u{i}" for i in range(50)]
    log.emit("decision_denied", background=True, user="last", now=0)
    log.close()
    assert json.loads((tmp_path / "a.log").read_text().splitlines()[-1])["user"] == "last"


def test_a_failing_writer_reports_once_and_recovers_with_the_count(tmp_path, capsys, monkeypatch):
    import forwardauth.services.audit as audit_mod

    log = AuditLog(str(tmp_path / "a.log"))
    before = audit_mod.LOST["write_failed"]
    _full_disk(monkeypatch)
    for _ in range(3):
        log.emit("signout", user="u")
        log.emit("decision_denied", background=True, user="v")
    assert log.flush()
    err = capsys.readouterr().err
    assert err == (f"forwardauth: audit log {tmp_path / 'a.log'}: write failed: No space left on device; "
                   "audit lines are being lost until it works again (counted in "
                   "forwardauth_audit_lines_lost_total)\n")
    assert log.lost == 6 and audit_mod.LOST["write_failed"] == before + 6
    monkeypatch.setattr(audit_mod, "_write_fd", os.write)
    log.emit("signout", user="back")
    assert capsys.readouterr().err == (f"forwardauth: audit log {tmp_path / 'a.log'}: writing again; "
                                       "6 lines were lost meanwhile\n")
    log.close()
    assert [json.loads(x)["user"] for x in (tmp_path / "a.log").read_text().splitlines()] == ["back"]


def test_a_short_write_never_tears_a_line(tmp_path, capsys, monkeypatch):
    """Issue 14: on a full disk a short write left a fragment, and the next line
    was glued to it (unparseable). The batch is cut back to its last whole line."""
    import forwardauth.services.audit as audit_mod

    log = AuditLog(str(tmp_path / "a.log"))
    log.emit("signout", user="first", now=0)
    one = len(log.line("decision_denied", user="u00", now=0)) + 1
    _full_disk(monkeypatch, room=one * 2 + 10)  # two lines and a fragment of the third fit
    before = audit_mod.LOST["short_write"]
    for i in range(5):
        log.emit("decision_denied", background=True, user=f"u{i:02d}", now=0)
    assert log.flush()
    monkeypatch.setattr(audit_mod, "_write_fd", os.write)  # space again
    log.emit("signout", user="after", now=0)
    log.close()
    text = (tmp_path / "a.log").read_text()
    users = [json.loads(x)["user"] for x in text.splitlines()]  # every line parses
    assert users[0] == "first" and users[-1] == "after"
    assert text.endswith("\n") and len(users) + log.lost == 7
    assert audit_mod.LOST["short_write"] + audit_mod.LOST["write_failed"] > before
    err = capsys.readouterr().err
    assert "the disk took part of a batch; it was cut back to the last whole line" in err
    assert f"writing again; {log.lost} lines were lost meanwhile" in err


def test_a_deleted_file_is_made_again_before_the_next_line(tmp_path, capsys):
    """Issue 14: a deleted audit file lost every later event, with no report."""
    path = tmp_path / "a.log"
    log = AuditLog(str(path))
    log.emit("signout", user="before", now=0)
    path.unlink()
    log.emit("signout", user="after", now=0)
    assert [json.loads(x)["user"] for x in path.read_text().splitlines()] == ["after"]
    assert capsys.readouterr().err == (f"forwardauth: audit log {path}: the file was deleted or moved away; "
                                       "writing to a new one at its path\n")
    assert log.lost == 0
    log.close()


def test_logrotate_renames_then_sighup_reopens(tmp_path, capsys):
    path = tmp_path / "a.log"
    log = AuditLog(str(path))
    log.emit("signout", user="old", now=0)
    path.rename(tmp_path / "a.log.1")  # logrotate (create mode), then SIGHUP
    log.reopen()
    log.emit("signout", user="new", now=0)
    assert [json.loads(x)["user"] for x in (tmp_path / "a.log.1").read_text().splitlines()] == ["old"]
    assert [json.loads(x)["user"] for x in path.read_text().splitlines()] == ["new"]
    assert capsys.readouterr().err == f"forwardauth: audit log {path}: reopened on request\n"
    log.close()


def test_after_close_nothing_goes_to_stdout_by_mistake(tmp_path, capsys):
    log = AuditLog(str(tmp_path / "a.log"))
    log.close()
    log.emit("signout", user="late")
    log.emit("signout", background=True, user="later")
    log.flush()
    out = capsys.readouterr()
    assert out.out == "" and "write failed" in out.err
    assert (tmp_path / "a.log").read_text() == ""


def test_an_unwritable_target_is_a_clear_config_error(tmp_path):
    from forwardauth.core.errors import ConfigError
    from forwardauth.services.audit import open_target

    with pytest.raises(ConfigError, match=r"^local\.audit: cannot open the audit log '.*/nope/a\.log' for writing: "
                                          r"No such file or directory$"):
        open_target(str(tmp_path / "nope" / "a.log"))


def test_a_stuck_writer_drops_lines_instead_of_growing(tmp_path, capsys, monkeypatch):
    import forwardauth.services.audit as audit_mod

    monkeypatch.setattr(audit_mod, "MAX_QUEUED", 3)
    log = AuditLog(str(tmp_path / "a.log"))
    gate = __import__("threading").Event()
    real = log._write
    monkeypatch.setattr(log, "_write", lambda data: (gate.wait(5), real(data)))
    for i in range(10):
        log.emit("decision_denied", background=True, user=f"u{i}", now=0)
    assert log._pending <= 3
    gate.set()
    assert log.flush()
    log.close()
    written = [json.loads(x)["user"] for x in (tmp_path / "a.log").read_text().splitlines()]
    assert written == [f"u{i}" for i in range(len(written))] and 1 <= len(written) <= 4
    err = capsys.readouterr().err
    assert "3 lines waiting to be written; dropping more until the writer catches up" in err
    assert f"{10 - len(written)} lines were dropped" in err
