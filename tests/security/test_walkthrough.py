"""The README's "See it guard an app" walk-through, with only its ports changed:
the embedded default config (forwardauth/default.yaml), examples/local/nginx.conf
and examples/echo_app.py. Anonymous requests must not get past /public/ in any
spelling, for whichever app an operator puts behind it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.apps import KINDS, route_of
from harness.ci import missing_tool
from harness.corpus import spellings
from harness.forwardauth import cli
from harness.procs import Proc, free_port, http_status
from harness.proxies import REPO, MissingTool, Running, require
from harness.rawhttp import RawClient
from harness.shipped import start_nginx_example

pytestmark = pytest.mark.proxy

DEFAULT = REPO / "forwardauth" / "default.yaml"
BYPASSES = ["/admin/..%2fpublic/x", "/admin/../public/x", "/admin/%2e%2e/public/x", "/admin/..;/public/x",
            "/admin/..%5cpublic/x", "/admin/..\\public/x", "/public/x#/../../admin/x", "/public/..%2fadmin/x",
            "/secret/..%2fpublic/x", "/public/%2e%2e/secret/x"]


def default_config(workdir: Path, port: int) -> Path:
    """forwardauth/default.yaml as `forwardauth serve` runs it with no -c, on `port`."""
    text = DEFAULT.read_text()
    assert text.count("127.0.0.1:4180") == 2, "default.yaml changed: update this test"
    text = text.replace("{var}", str(workdir)).replace("127.0.0.1:4180", f"127.0.0.1:{port}")
    cli("keys", "generate", "-o", str(workdir / "keys.json"))
    path = workdir / "default.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    try:
        require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    root = tmp_path_factory.mktemp("walkthrough")
    fa_port, app_port = free_port(), free_port()
    config = default_config(root, fa_port)
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", str(config)], root / "fa.log")
    app = Proc("echo_app", [sys.executable, str(REPO / "examples" / "echo_app.py"), "--listen",
                            f"127.0.0.1:{app_port}"], root / "echo.log")
    nginx: Running | None = None
    try:
        fa.start()
        app.start()
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready")
        app.wait_until(lambda: http_status(app_port, "/") == 200, what="answering")
        nginx = start_nginx_example("local", root / "nginx", fa_port, app_port, "127.0.0.1")
        nginx.proc.start()
        nginx.proc.wait_until(lambda: http_status(nginx.port, "/public/x", f"127.0.0.1:{nginx.port}") == 200,
                              what="serving /public/x")
        yield nginx
    finally:
        if nginx is not None:
            nginx.stop()
        app.stop()
        fa.stop()


def get(nginx: Running, target: str):
    client = RawClient(nginx.port)
    try:
        return client.request(target, f"127.0.0.1:{nginx.port}", {"Accept": "application/json"})
    except Exception:  # noqa: BLE001 - nginx closed the connection on a request line it refuses
        return None
    finally:
        client.close()


def reached_echo_app(reply) -> bool:
    return reply is not None and reply.status == 200 and b'"headers"' in reply.body


def test_walkthrough_guards_admin_and_serves_public(walkthrough):
    assert reached_echo_app(get(walkthrough, "/public/x"))
    reply = get(walkthrough, "/admin/x")
    assert reply.status == 401 and json.loads(reply.body)["required_level"] == "mfa", reply
    assert get(walkthrough, "/anything").status == 401


@pytest.mark.parametrize("target", BYPASSES)
def test_walkthrough_bypasses_from_issue_9_are_refused(walkthrough, target):
    reply = get(walkthrough, target)
    assert not reached_echo_app(reply), f"{target!r} reached the app anonymously: {reply!r}"


def test_walkthrough_no_spelling_reaches_past_public_anonymously(walkthrough):
    """Whatever the echo app answers anonymously, every app of harness.apps would have
    routed as /public/ (the only anonymous route of the embedded default)."""
    leaks = []
    for name, target in spellings((("admin", "public"), ("secret", "public"))):
        if reached_echo_app(get(walkthrough, target)):
            routes = {kind: route_of(kind, target) for kind in KINDS}
            if set(routes.values()) - {"public", "redirect", "refused"}:  # the last two serve nothing
                leaks.append(f"{name} {target!r}: {routes}")
    assert not leaks, "\n".join(leaks)
