"""The audit log failing after the start, under a running `forwardauth serve`
with decisions and sign-ins flowing: its disk full (a small loop-mounted
ext4 filled up), the file unwritable (immutable), renamed by logrotate
(then SIGHUP) and deleted.

The contract chosen (README, "When things break", audit log): auth events
MAY be dropped, so that a broken log disk never stops every app behind
forwardauth; never silently: each lost line is counted
(forwardauth_audit_lines_lost_total{reason} on /metrics), the log says when
losing starts and, when writing works again, how many lines were lost. No
line is ever torn (the file parses line by line after a full disk), and
/readyz stays ready. When the fault clears, lines are written again by
themselves; a renamed or deleted file is made anew at its path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from harness.faults import decided, fill, loop_disk, metric
from harness.flow import Flow
from harness.forms import Browser
from harness.tokens import TokenServer

PASSWORD = "correct-horse-battery"
LOST = "forwardauth_audit_lines_lost_total"


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    with loop_disk(tmp_path_factory.mktemp("auditdisk"), size_mb=4) as d:
        yield d


@pytest.fixture(scope="module")
def fa(tmp_path_factory, disk):
    work = tmp_path_factory.mktemp("audit-faults")
    server = TokenServer(work, extra={"local": {"audit": str(disk / "audit.log"), "scrypt": {"log_n": 10}}})
    subprocess.run([sys.executable, "-m", "forwardauth", "users", "add", "-c", str(server.config), "alice",
                    "--password-stdin"], input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True,
                   capture_output=True)
    server.cookie = server.cli("session", "issue", "--user", "bob", "--level", "password").strip()
    with server:
        yield server


def lost(fa) -> float:
    return sum(metric(fa.port, LOST, reason=r) for r in ("write_failed", "short_write", "queue_full"))


def lines(path) -> list[dict]:
    """Every line of the audit file, parsed: a torn line fails here."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def traffic(fa, n: int) -> list[int]:
    """n denials (decision_denied lines, queued) and a sign-in (signin_ok, written at once); their statuses."""
    out = [decided(fa, f"/denied/{i}", cookie=fa.cookie) for i in range(n)]
    b = Browser(fa.port, f"auth.test:{fa.port}")
    out.append(b.sign_in("alice", PASSWORD, "http://app.test/api/x").status)
    return out


def test_a_full_disk_loses_lines_counted_and_never_tears_one(fa, disk):
    path = disk / "audit.log"
    assert set(traffic(fa, 20)) == {403, 303}
    before, written = lost(fa), len(lines(path))
    with Flow({"cookie": lambda: decided(fa, "/api/x", cookie=fa.cookie)}) as flow:
        filler = fill(disk)
        statuses = traffic(fa, 200)
        time.sleep(0.5)
        during = lost(fa) - before
        assert fa.api("GET", "/readyz").status == 200  # fail-open: decisions and readiness go on
        os.unlink(filler)
        time.sleep(0.2)
        assert set(traffic(fa, 5)) == {403, 303}
        time.sleep(0.5)
    assert set(statuses) == {403, 303}, "a full audit disk changed an answer"
    assert flow.statuses("cookie") == {200}
    assert during > 0
    parsed = lines(path)  # every line parses: none torn, none glued to a fragment
    log = fa.proc.log(10**9)
    assert "audit log" in log and "write failed: No space left on device" in log
    m = re.findall(r"writing again; (\d+) lines were lost meanwhile", log)
    assert m, log[-2000:]
    total = lost(fa) - before
    assert int(m[-1]) == total, (m, total)  # the log and the metric say the same
    assert len(parsed) - written + total == 201 + 6, (len(parsed), written, total)  # every line: written or counted
    reasons = {r: metric(fa.port, LOST, reason=r) for r in ("write_failed", "short_write", "queue_full")}
    print(f"\n[full disk] {total:.0f} lines lost and counted ({reasons}), {len(parsed) - written} written; "
          f"{flow.table()}")


def test_an_unwritable_file_then_writable_again(fa, disk):
    path = disk / "audit.log"
    before = lost(fa)
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        assert set(traffic(fa, 10)) == {403, 303}
        time.sleep(0.5)
        assert lost(fa) - before == 11
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    n = len(lines(path))
    assert set(traffic(fa, 3)) == {403, 303}
    time.sleep(0.5)
    assert len(lines(path)) == n + 4
    assert "writing again; 11 lines were lost meanwhile" in fa.proc.log(10**9)


def test_logrotate_then_sighup_and_a_deleted_file(fa, disk):
    path = disk / "audit.log"
    os.rename(path, disk / "audit.log.1")
    fa.proc.popen.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert set(traffic(fa, 3)) == {403, 303}
    time.sleep(0.5)
    assert [e["event"] for e in lines(path)].count("decision_denied") == 3
    os.unlink(path)
    before = lost(fa)
    assert set(traffic(fa, 2)) == {403, 303}
    time.sleep(0.5)
    assert [e["event"] for e in lines(path)] == ["decision_denied", "decision_denied", "signin_ok"]
    assert lost(fa) == before
    log = fa.proc.log(10**9)
    assert "reopened on request" in log and "the file was deleted or moved away; writing to a new one" in log
