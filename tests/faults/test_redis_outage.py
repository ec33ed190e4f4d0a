"""Redis SIGKILLed for longer than tokens.stale_grace, then restarted, with
persistence and empty, while decisions flow: cookies and bearer tokens,
through real nginx (in front of replica a) and straight to replica b, which
is restarted during the outage.

What the README promises ("When things break", Redis):
- within the grace: every decision answers from memory, as before;
- past it: bearer tokens and cookie routes that need a level fail closed
  (503, through nginx too), anonymous routes still answer;
- a process cannot start while Redis is unreachable (it exits 1, saying so);
- back with its data: everything works again, /readyz 200, nothing to do;
- back empty: detected (the marker), the revocations the running process
  remembered are written back (a revoked cookie stays refused, on the
  replica restarted meanwhile too), tokens are forgotten (401: issue them
  again), /readyz answers 503 until `forwardauth state ack`;
- never, at any moment, is a revoked cookie or token let through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from harness.client import request
from harness.faults import decided, nginx_for, through
from harness.flow import Flow
from harness.redis import RedisServer
from harness.tokens import TokenServer

pytestmark = [pytest.mark.redis, pytest.mark.proxy]
GRACE = 4.0


def ready(fa) -> tuple[int, str]:
    r = request(fa.port, "/readyz", host="auth.test")
    return r.status, r.text


@pytest.mark.parametrize("persist", [True, False], ids=["persistent", "empty"])
def test_redis_killed_past_the_grace_then_back(tmp_path, echo_app, persist):
    redis = RedisServer(tmp_path / "redis", persist=persist).start()
    opts = {"state": redis.url, "refresh": "0.5s", "tokens": {"stale_grace": f"{GRACE:.0f}s", "index_refresh": "30s"}}
    a, b = TokenServer(tmp_path, **opts), TokenServer(tmp_path, **opts)
    nginx = None
    try:
        a.account("root", roles="admin")
        a.account("svc", kind="system")
        a.account("alice")
        a.cli("state", "ack")
        a.start()
        b.start()
        nginx = nginx_for(tmp_path / "nginx", a.port, echo_app.port)
        admin = a.token("root", "--name", "admin")
        tok_ok = a.token("svc")
        tok_gone = a.token("alice", "--name", "gone")
        cookie_ok = a.cli("session", "issue", "--user", "bob", "--level", "password").strip()
        cookie_gone = a.cli("session", "issue", "--user", "carol", "--level", "password").strip()
        gone_id = json.loads(a.cli("tokens", "inspect", tok_gone))["token_id"]
        while a.api("GET", "/api/v1/tokens", admin).status != 200:
            time.sleep(0.05)
        assert a.api("DELETE", f"/api/v1/tokens/{gone_id}", admin).status == 200
        a.cli("session", "revoke", "--user", "carol")  # just before the outage

        checks = {
            "nginx:cookie": lambda: through(nginx, "/api/x", cookie=cookie_ok),
            "nginx:token": lambda: through(nginx, "/api/x", tok_ok),
            "nginx:revoked-cookie": lambda: through(nginx, "/api/x", cookie=cookie_gone),
            "nginx:revoked-token": lambda: through(nginx, "/api/x", tok_gone),
            "nginx:anonymous": lambda: through(nginx, "/public/x"),
            "b:cookie": lambda: decided(b, "/api/x", cookie=cookie_ok),
            "b:revoked-cookie": lambda: decided(b, "/api/x", cookie=cookie_gone),
            "b:revoked-token": lambda: decided(b, "/api/x", tok_gone),
        }
        with Flow(checks) as flow:
            for name, want in (("nginx:cookie", 200), ("nginx:token", 200), ("nginx:revoked-cookie", 401),
                               ("nginx:revoked-token", 401), ("b:cookie", 200), ("b:revoked-cookie", 401),
                               ("b:revoked-token", 401)):
                flow.wait(name, want, 5)
            killed = flow.now()
            redis.kill()
            # b restarts during the outage: it cannot start without its store (exit 1, saying why).
            time.sleep(1.0)
            b.stop()
            p = subprocess.run([sys.executable, "-m", "forwardauth", "serve", "-c", str(b.config)],
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 1 and "cannot start" in p.stderr and "redis unreachable" in p.stderr, p.stderr
            closed = flow.wait("nginx:token", 503, GRACE + 5, since=killed)
            flow.wait("nginx:cookie", 503, 3, since=killed)
            time.sleep(2.5)  # answers from closed + 1 s to Redis back: at least 1.5 s of them, all 503
            assert ready(a)[0] == 503 and "state store unreachable" in ready(a)[1]
            back = flow.now()
            redis.start()
            b.start(ready=False)
            flow.wait("nginx:cookie", 200, 10, since=back)
            flow.wait("b:cookie", 200, 15, since=back)
            if persist:
                flow.wait("nginx:token", 200, 10, since=back)
            else:
                flow.wait("nginx:token", 401, 10, since=back)  # an empty Redis forgot every token
            time.sleep(1.5)
            settled = flow.now()
            time.sleep(1.0)
        print(f"\n[{'persistent' if persist else 'empty'}] killed at {killed:.1f}s, tokens refused (503) at "
              f"{closed:.1f}s ({closed - killed:.1f}s after), Redis back at {back:.1f}s; {flow.table()}")

        # Nothing wrongly allowed, at any moment, on either replica (b: 0 while it was down).
        for name in ("nginx:revoked-cookie", "nginx:revoked-token"):
            assert flow.statuses(name) <= {401, 503}, (name, flow.table())
        for name in ("b:revoked-cookie", "b:revoked-token"):
            assert flow.statuses(name) <= {0, 401, 503}, (name, flow.table())
        # Within the grace: answers from memory, as before.
        for name in ("nginx:cookie", "nginx:token"):
            assert flow.statuses(name, killed, killed + GRACE - 0.5) == {200}, (name, flow.table())
        assert closed - killed >= GRACE - 0.6  # the grace counts from the last good refresh (0.5 s ticks)
        # Past it: fail closed with a 503 (through nginx too); anonymous routes still answer.
        for name in ("nginx:cookie", "nginx:token"):
            assert flow.statuses(name, closed + 1.0, back) == {503}, (name, flow.table())
        assert flow.statuses("nginx:anonymous") == {200}
        # Back: cookies as before; tokens as before (persistent) or forgotten (empty).
        assert flow.statuses("nginx:cookie", settled) == {200} and flow.statuses("b:cookie", settled) == {200}
        assert flow.statuses("nginx:token", settled) == ({200} if persist else {401})

        if persist:
            assert ready(a)[0] == 200 and ready(b)[0] == 200
        else:
            for fa in (a, b):
                code, text = ready(fa)
                assert code == 503 and text.startswith("not ready: redis state lost its data at "), text
            assert "redis state: its marker is gone: Redis lost its data" in a.proc.log(10**9)
            assert "wrote back 1 epochs" in a.proc.log(10**9)
            assert a.cli("state", "ack").strip() == "the recorded loss is acknowledged"
            deadline = time.monotonic() + 10
            while not (ready(a)[0] == ready(b)[0] == 200):
                assert time.monotonic() < deadline, (ready(a), ready(b))
                time.sleep(0.1)
            assert decided(b, "/api/x", cookie=cookie_gone) == 401  # still: it was written back
    finally:
        if nginx is not None:
            nginx.stop()
        a.stop()
        b.stop()
        redis.stop()
