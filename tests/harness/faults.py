"""Helpers of the fault suite (tests/faults): what a decision answered,
directly or through nginx, as one status (to nginx a 503 is a 403 saying
503; the shipped snippet answers 503), and nginx in front of a forwardauth."""

from __future__ import annotations

from .ci import missing_tool
from .client import request
from .proxies import MissingTool, require, start_proxy
from .tokens import APP


def status(reply) -> int:
    """The status as the client of nginx sees it: /auth/nginx's 403 saying 503 is a 503."""
    if reply.status == 403 and reply.header("X-Forwardauth-Status") == "503":
        return 503
    return reply.status


def decided(fa, path: str, token: str | None = None, cookie: str | None = None) -> int:
    return status(fa.decide(path, token, cookie=cookie))


def through(nginx, path: str, token: str | None = None, cookie: str | None = None) -> int:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"forwardauth={cookie}"
    return request(nginx.port, path, host=f"{APP}:{nginx.port}", headers=headers, timeout=15).status


def nginx_for(workdir, fa_port: int, app_port: int):
    try:
        require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    return start_proxy("nginx", workdir, fa_port, app_port, APP, "forwardauth")
