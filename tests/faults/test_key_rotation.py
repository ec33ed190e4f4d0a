"""Key rotation and removal under load, on a running `forwardauth serve`
(reloaded with SIGHUP after each change to the key ring file), with
decisions flowing as fast as one client can ask: a rotation signs nobody
out and keeps every token; retiring the old key's cookies signs out exactly
the sessions sealed under it (tokens minted under it keep working); removing
the key then retires exactly what `keys remove` said (those tokens).
No answer is ever an error."""

from __future__ import annotations

import json
import signal
import time

from forwardauth.core.keyring import KeyRing
from harness.faults import decided
from harness.flow import Flow
from harness.forwardauth import cli
from harness.tokens import TokenServer


def reload(fa) -> None:
    fa.proc.popen.send_signal(signal.SIGHUP)


def test_rotation_and_removal_under_load(tmp_path):
    fa = TokenServer(tmp_path)
    fa.account("svc", kind="system")
    fa.account("alice")
    keys = str(tmp_path / "keys.json")
    old = KeyRing.load(keys).current.id
    old_cookie = fa.cli("session", "issue", "--user", "bob", "--level", "password").strip()
    old_token = fa.token("svc")
    with fa:
        new_cookie: list[str] = []
        new_token: list[str] = []
        checks = {
            "old-cookie": lambda: decided(fa, "/api/x", cookie=old_cookie),
            "old-token": lambda: decided(fa, "/api/x", old_token),
            "new-cookie": lambda: decided(fa, "/api/x", cookie=new_cookie[0]) if new_cookie else 200,
            "new-token": lambda: decided(fa, "/api/x", new_token[0]) if new_token else 200,
        }
        with Flow(checks, pause=0.0) as flow:
            flow.wait("old-cookie", 200, 5)
            cli("keys", "generate", "--rotate", keys)
            reload(fa)
            rotated = flow.now()
            new = KeyRing.load(keys).current.id
            new_cookie.append(fa.cli("session", "issue", "--user", "carol", "--level", "password").strip())
            token = fa.token("alice", "--name", "after-rotation")
            # A token the CLI issues reaches the running server with its next index refresh.
            deadline = time.monotonic() + 10
            while decided(fa, "/api/x", token) != 200:
                assert time.monotonic() < deadline, "the server never learnt the new token"
                time.sleep(0.05)
            new_token.append(token)
            assert new_cookie[0].startswith(new + ".")
            time.sleep(2.0)
            cli("keys", "retire", keys, old)
            reload(fa)
            retired = flow.now()
            flow.wait("old-cookie", 401, 5, since=retired)
            time.sleep(2.0)
            out = fa.cli("keys", "remove", old, "--force")
            token_id = json.loads(fa.cli("tokens", "inspect", old_token))["token_id"]
            assert f"API tokens minted under it, still valid: 1 ({token_id}; issue new ones)" in out
            reload(fa)
            removed = flow.now()
            flow.wait("old-token", 401, 5, since=removed)
            time.sleep(2.0)
    answers = len(flow.answers)
    print(f"\n[keys] {answers} decisions; rotated at {rotated:.1f}s, old key's cookies retired at {retired:.1f}s, "
          f"removed at {removed:.1f}s; {flow.table()}")
    assert answers > 400
    # nobody signed out by the rotation, no error ever
    assert flow.statuses("old-cookie", 0, retired) == {200}, flow.table()
    assert flow.statuses("old-token", 0, removed) == {200}, flow.table()
    # only the retired key's cookies are signed out, then only its tokens refused
    assert flow.statuses("old-cookie", retired + 1.0) == {401}
    assert flow.statuses("old-token", removed + 1.0) == {401}
    assert flow.statuses("new-cookie") == {200} and flow.statuses("new-token") == {200}, flow.table()
    assert rotated < retired < removed
