"""Run the real forwardauth server (`forwardauth serve`) and its CLI for tests.

The config is written as YAML into the test's tmp dir with a key ring made by
`forwardauth keys generate`, an SQLite state file, and the policy the proxy
tests rely on (see POLICY). Cookies are minted with `forwardauth session
issue` and users revoked with `forwardauth session revoke`: the same commands
an operator runs, against the same files the running server reads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .procs import Proc, free_port, http_status

APP_HOST = "app.test"
# A host the policy lets through anonymously but no proxy serves: a request
# naming it must never reach the app (see test_proxies).
STATUS_HOST = "status.test"
COOKIE = "forwardauth"
PASSWORD_ACR = "urn:forwardauth:acr:password"
MFA_ACR = "urn:forwardauth:acr:mfa"

# The routes the proxy tests use, on host app.test. First match wins.
POLICY = {
    "default": "deny",
    "rules": [
        {"name": "status", "hosts": [STATUS_HOST], "allow": "anonymous"},
        {"name": "public", "hosts": [APP_HOST], "paths": ["/public/"], "allow": "anonymous"},
        {"name": "closed", "hosts": [APP_HOST], "paths": ["/deny/"], "deny": True},
        {"name": "mfa", "hosts": [APP_HOST], "paths": ["/mfa/"], "level": "mfa"},
        {"name": "fresh-mfa", "hosts": [APP_HOST], "paths": ["/fresh/"], "level": "mfa", "max_age": "15m"},
        {"name": "admins", "hosts": [APP_HOST], "paths": ["/admin/"], "level": "password", "groups": ["admins"]},
        {"name": "password", "hosts": [APP_HOST], "paths": ["/password/"], "level": "password"},
    ],
}


def cli(*args: str, timeout: float = 30.0) -> str:
    """Run `python -m forwardauth ARGS`; return stdout, fail with stderr on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "forwardauth", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"forwardauth {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc.stdout


def _merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(workdir: Path, port: int, *, policy: dict | None = None, idle_timeout: str = "1h",
                refresh_interval: str = "0.5s", extra: dict | None = None) -> Path:
    """Write keys.json and forwardauth.yaml into `workdir`; return the config path.

    extra: more config laid over the defaults, e.g. an `oidc:` section or
    {"server": {"public_url": ...}, "session": {"domain": ...}}.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys.json"
    if not keys.exists():
        cli("keys", "generate", "-o", str(keys))
    config = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://auth.test:{port}",
            "trusted_proxies": ["127.0.0.1/32"],
            "allowed_redirect_domains": [".test"],
        },
        "session": {"cookie_name": COOKIE, "secure": False, "lifetime": "12h", "idle_timeout": idle_timeout},
        "keys": {"file": str(keys)},
        "state": f"sqlite:///{workdir / 'state.db'}",
        "revocation": {"refresh_interval": refresh_interval},
        "levels": [
            {"name": "password", "acr": [PASSWORD_ACR]},
            {"name": "mfa", "acr": [MFA_ACR]},
        ],
        "policy": policy or POLICY,
    }
    config = _merge(config, extra or {})
    path = workdir / "forwardauth.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ForwardAuth:
    """A running `forwardauth serve` on 127.0.0.1:port, plus helpers for its CLI."""

    def __init__(self, workdir: Path, *, port: int | None = None, **config_opts):
        """config_opts go to make_config(); `port` (default: a free one) lets a test put the
        port into config it passes as `extra` before the server exists."""
        self.port = port or free_port()
        self.workdir = workdir
        self.config = make_config(workdir, self.port, **config_opts)
        self.public_url = yaml.safe_load(self.config.read_text())["server"]["public_url"]
        self.proc = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", self.config],
                         workdir / "forwardauth.log")

    def start(self) -> ForwardAuth:
        self.proc.start()
        self.proc.wait_until(lambda: http_status(self.port, "/readyz") == 200, what="ready on /readyz")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self) -> ForwardAuth:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def issue(self, user: str, level: str, *, email: str | None = None, groups: tuple[str, ...] = (),
              name: str | None = None) -> str:
        """A sealed session cookie value for `user` at `level`."""
        args = ["session", "issue", "-c", str(self.config), "--user", user, "--level", level]
        if email:
            args += ["--email", email]
        if groups:
            args += ["--groups", ",".join(groups)]
        if name:
            args += ["--name", name]
        value = cli(*args).strip()
        assert value and "\n" not in value and " " not in value, f"odd cookie value: {value!r}"
        return value

    def revoke(self, user: str) -> None:
        cli("session", "revoke", "-c", str(self.config), "--user", user)
