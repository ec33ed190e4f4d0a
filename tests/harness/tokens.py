"""forwardauth servers configured for the token tests: any state URL (SQLite
or a shared Redis), a `tokens:` section, an audit log file, and the CLI run
against the same config. Several `TokenServer`s may share one config (the
replica tests): each gets its own port through `server.listen` in its own copy.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .client import Reply, request
from .forwardauth import MFA_ACR, PASSWORD_ACR, cli
from .procs import Proc, free_port, http_status

APP = "app.test"
AUTH = "auth.test"

POLICY = {
    "default": "deny",
    "rules": [
        {"name": "public", "hosts": [APP], "paths": ["/public/"], "allow": "anonymous"},
        {"name": "mfa", "hosts": [APP], "paths": ["/mfa/"], "level": "mfa"},
        {"name": "admins", "hosts": [APP], "paths": ["/admin/"], "level": "password", "groups": ["admins"]},
        {"name": "api", "hosts": [APP], "paths": ["/api/", "/password/"], "level": "password"},
    ],
}


def write_config(workdir: Path, port: int, state: str, tokens: dict[str, Any] | None = None,
                 refresh: str = "0.5s", extra: dict[str, Any] | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys.json"
    if not keys.exists():
        cli("keys", "generate", "-o", str(keys))
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": f"http://{AUTH}:{port}",
                   "trusted_proxies": ["127.0.0.1/32"], "allowed_redirect_domains": [".test"]},
        "session": {"cookie_name": "forwardauth", "secure": False, "lifetime": "12h", "idle_timeout": "1h"},
        "keys": {"file": str(keys)},
        "state": state,
        "revocation": {"refresh_interval": refresh},
        "levels": [{"name": "password", "acr": [PASSWORD_ACR]}, {"name": "mfa", "acr": [MFA_ACR]}],
        "policy": POLICY,
        "tokens": {"last_used_flush": "0.2s", **(tokens or {})},
        "local": {"audit": str(workdir / "audit.log")},
        **(extra or {}),
    }
    path = workdir / f"forwardauth-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class TokenServer:
    def __init__(self, workdir: Path, state: str | None = None, **opts: Any):
        self.port = free_port()
        self.workdir = workdir
        self.config = write_config(workdir, self.port, state or f"sqlite:///{workdir / 'state.db'}", **opts)
        self.proc = Proc(f"forwardauth:{self.port}", [sys.executable, "-m", "forwardauth", "serve", "-c", self.config],
                         workdir / f"forwardauth-{self.port}.log")

    def start(self, ready: bool = True) -> TokenServer:
        """Start and wait until /readyz says ready (`ready`), or only until it answers (/healthz)."""
        self.proc.start()
        if ready:
            self.proc.wait_until(lambda: http_status(self.port, "/readyz") == 200, what="ready on /readyz")
        else:
            self.proc.wait_until(lambda: http_status(self.port, "/healthz") == 200, what="answering /healthz")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- CLI against this config ----------------------------------------------

    def cli(self, *args: str) -> str:
        """`forwardauth GROUP CMD -c CONFIG ...` (attenuate needs no config: it has no key)."""
        if args[:2] == ("tokens", "attenuate"):
            return cli(*args)
        return cli(*args[:2], "-c", str(self.config), *args[2:])

    def account(self, name: str, kind: str = "human", roles: str = "") -> None:
        self.cli("accounts", "create", name, "--kind", kind, "--roles", roles)

    def token(self, account: str, *extra: str) -> str:
        return self.cli("tokens", "issue", "--account", account, *extra).strip()

    # --- requests ---------------------------------------------------------------

    def decide(self, path: str, token: str | None = None, method: str = "GET", host: str = APP,
               cookie: str | None = None, headers: dict | None = None) -> Reply:
        h = {"X-Original-URL": f"http://{host}{path}", "X-Original-Method": method, **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            h["Cookie"] = f"forwardauth={cookie}"
        return request(self.port, "/auth/nginx", host=AUTH, headers=h)

    def api(self, method: str, path: str, token: str | None = None, body: Any = None,
            headers: dict | None = None, timeout: float = 10.0) -> Reply:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers={"Host": f"{AUTH}:{self.port}", **h})
            resp = conn.getresponse()
            return Reply(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def audit(self) -> list[dict]:
        p = self.workdir / "audit.log"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
