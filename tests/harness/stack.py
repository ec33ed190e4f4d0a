"""The stack the security tests share: forwardauth, three apps, and each proxy
from its shipped config in front of each app (nine proxies), started once.

Policy (host app.test): /public/ anonymous, /admin/ mfa, /blocked/ denied,
/app/ password, anything else password. Credentials: none, a `password`
session cookie, an `mfa` one (control cases only), and a token of level mfa
limited to /app/ (`tokens issue --path /app/`).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import apps as apps_module
from .ci import missing_tool
from .forwardauth import COOKIE, ForwardAuth, cli
from .procs import Proc, free_port, http_status
from .proxies import Running

APP_HOST = "app.test"
POLICY = {
    "default": "deny",
    "rules": [
        {"name": "public", "hosts": [APP_HOST], "paths": ["/public/"], "allow": "anonymous"},
        {"name": "admin", "hosts": [APP_HOST], "paths": ["/admin/"], "level": "mfa"},
        {"name": "blocked", "hosts": [APP_HOST], "paths": ["/blocked/"], "deny": True},
        {"name": "app", "hosts": [APP_HOST], "paths": ["/app/"], "level": "password"},
        {"name": "rest", "hosts": [APP_HOST], "level": "password"},
    ],
}
USERS = {"password": "pat", "mfa": "mo", "token": "svc"}
API = {"Accept": "application/json"}


@dataclass
class Stack:
    fa: ForwardAuth
    apps: dict[str, Running]
    proxies: dict[tuple[str, str], Running] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    creds: dict[str, dict[str, str]] = field(default_factory=dict)

    def proxy(self, proxy: str, app: str) -> Running:
        if proxy in self.missing:
            missing_tool(self.missing[proxy])
        return self.proxies[(proxy, app)]

    def host(self, running: Running) -> str:
        return f"{APP_HOST}:{running.port}"


def start_app(kind: str, workdir: Path) -> Running:
    port = free_port()
    proc = Proc(f"app-{kind}", [sys.executable, apps_module.__file__, kind, "--port", str(port)],
                workdir / f"app-{kind}.log").start()
    try:
        proc.wait_until(lambda: http_status(port, "/public/ready") == 200, what="answering")
    except BaseException:
        proc.stop()
        raise
    return Running(kind, port, proc)


def matrix_forwardauth(workdir: Path) -> tuple[ForwardAuth, dict[str, dict[str, str]]]:
    """forwardauth with POLICY, the system account `svc` (tokens at level mfa) and its
    token limited to /app/ made before it starts (so its token index has them).
    The CLI calls run side by side: each is a Python start-up of a second or more."""
    fa = ForwardAuth(workdir, policy=POLICY, extra={"tokens": {"levels": {"svc": "mfa"}}})
    config = str(fa.config)

    def token() -> str:
        cli("accounts", "create", "svc", "-c", config, "--kind", "system")
        return cli("tokens", "issue", "-c", config, "--account", "svc", "--path", "/app/").strip()

    with ThreadPoolExecutor(3) as pool:
        tok = pool.submit(token)
        password = pool.submit(fa.issue, USERS["password"], "password")
        mfa = pool.submit(fa.issue, USERS["mfa"], "mfa")
        creds = {
            "none": {**API},
            "password": {**API, "Cookie": f"{COOKIE}={password.result()}"},
            "mfa": {**API, "Cookie": f"{COOKIE}={mfa.result()}"},
            "token": {**API, "Authorization": f"Bearer {tok.result()}"},
        }
    return fa, creds
