"""The OpenID provider down, slow (it answers after 35 s) or answering
garbage, in front of a real `forwardauth serve`: the test provider sits
behind a proxy that misbehaves on demand (harness/chaos.py).

What the README promises ("When things break", OpenID provider):
- /oauth2/start answers within oidc.http_timeout (5 s) plus a moment, with
  a clear 502 page once the provider is asked and fails (a start uses the
  discovery it has for 10 s after the provider last answered; after a
  failure, starts answer 502 at once for 5 s);
- the callback of a login begun before the fault answers a clear 502 page
  within the same bound (the code cannot be exchanged);
- existing sessions are unaffected: the decision endpoints never call the
  provider;
- when the provider is back, sign-in works again by itself.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from harness.chaos import ChaosProxy, ProxiedProvider
from harness.client import request
from harness.flow import Flow
from harness.forms import Browser
from harness.forwardauth import ForwardAuth
from harness.oidc import ACR_PASSWORD
from harness.procs import free_port

pytestmark = pytest.mark.oidc
RD = "http://app.test/password/x"
BOUND = 5.0 + 2.0  # oidc.http_timeout, and a moment


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("oidc-faults")
    proxy = ChaosProxy().start()
    port = free_port()
    op = None
    fa = None
    try:
        op = ProxiedProvider(proxy, [f"http://auth.test:{port}/oauth2/callback"], log_dir=work).start()
        secret = work / "client-secret"
        secret.write_text(op.client_secret)
        fa = ForwardAuth(work, port=port, extra={"oidc": {"issuer": op.issuer, "client_id": op.client_id,
                                                          "client_secret_file": str(secret)}}).start()
        yield fa, op, proxy
    finally:
        if fa is not None:
            fa.stop()
        if op is not None:
            op.stop()
        proxy.stop()


def browser(fa) -> Browser:
    return Browser(fa.port, f"auth.test:{fa.port}")


def begin(fa, op, sub: str) -> tuple[Browser, str]:
    """A login begun while the provider answers: the browser and its callback URL (not delivered yet)."""
    b = browser(fa)
    r = b.get("/oauth2/start", rd=RD)
    assert r.status == 302, r
    op.next_login(sub, ACR_PASSWORD)
    callback = op.user_agent().follow(r.header("Location"))
    assert "/oauth2/callback?" in callback, callback
    parts = urlsplit(callback)
    return b, f"{parts.path}?{parts.query}"


def timed(call):
    t = time.monotonic()
    r = call()
    return r, time.monotonic() - t


@pytest.mark.parametrize("mode", ["down", "slow", "garbage"])
def test_provider_misbehaving(stack, mode):
    fa, op, proxy = stack
    proxy.set("pass")
    signed_in, callback = begin(fa, op, "alice")
    r = signed_in.get(callback)
    assert r.status == 302 and signed_in.cookie() is not None, r  # an existing session
    cookie = signed_in.cookie()
    pending_browser, pending = begin(fa, op, "bob")  # a login under way when the provider breaks
    checks = {"session": lambda: request(fa.port, "/auth/nginx", host="auth.test", headers={
        "X-Original-URL": RD, "X-Original-Method": "GET", "Cookie": f"forwardauth={cookie}"}).status}
    with Flow(checks) as flow:
        flow.wait("session", 200, 5)
        proxy.set(mode)
        broke = flow.now()
        r, took = timed(lambda: pending_browser.get(pending))
        callback_took = round(took, 1)
        assert took < BOUND, (mode, took)
        assert r.status == 502 and "Sign-in is unavailable" in r.text, r
        assert pending_browser.cookie() is None
        starts = []
        deadline = time.monotonic() + 25
        while True:
            r, took = timed(lambda: browser(fa).get("/oauth2/start", rd=RD))
            starts.append((r.status, round(took, 1)))
            assert took < BOUND and r.status in (302, 502), (mode, starts)
            if r.status == 502:
                break
            assert time.monotonic() < deadline, starts
            time.sleep(0.5)
        assert "Sign-in is unavailable" in r.text and "cannot be reached right now" in r.text, r
        r, took = timed(lambda: browser(fa).get("/oauth2/start", rd=RD))
        assert r.status == 502 and took < 1.0, (r.status, took)  # within 5 s of the failure: at once
        assert request(fa.port, "/oauth2/userinfo", host="auth.test",
                       headers={"Cookie": f"forwardauth={cookie}"}).status == 200
        proxy.set("pass")
        back = flow.now()
        deadline = time.monotonic() + 15
        while browser(fa).get("/oauth2/start", rd=RD).status != 302:  # recovers by itself
            assert time.monotonic() < deadline, "sign-in did not come back"
            time.sleep(0.5)
        recovered = flow.now()
    assert flow.statuses("session") == {200}, flow.table()  # existing sessions unaffected
    print(f"\n[{mode}] callback: 502 in {callback_took}s; starts (status, seconds): {starts}; broke at "
          f"{broke:.1f}s, back at {back:.1f}s, sign-in again at {recovered:.1f}s; {flow.table()}")
