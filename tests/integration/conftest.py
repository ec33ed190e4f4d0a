"""The `proxy` fixture: each of nginx, Traefik and Caddy in front of the echo app."""

from __future__ import annotations

import pytest

from harness.ci import missing_tool
from harness.forwardauth import APP_HOST, COOKIE
from harness.proxies import PROXIES, MissingTool, require, start_proxy


@pytest.fixture(scope="module", params=PROXIES)
def proxy(request, tmp_path_factory, forwardauth, echo_app):
    name = request.param
    try:
        require(name)
    except MissingTool as exc:
        missing_tool(str(exc))
    running = start_proxy(name, tmp_path_factory.mktemp(name), forwardauth.port, echo_app.port, APP_HOST, COOKIE)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request):
    """When a test fails, print the tails of the proxy's and forwardauth's logs."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    for name in ("proxy", "forwardauth"):
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            proc = getattr(server, "proc", None)
            if proc is not None:
                print(f"\n--- {proc.name} log ({proc.log_path}) ---\n{proc.log(4000)}")
