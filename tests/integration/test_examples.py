"""The shipped examples are valid for the tools that read them.

The proxy tests run nginx/ snippets, the Traefik dynamic file and the
Caddyfile for real; this module covers what they cannot: the full example
nginx.conf, and the compose stack's files agreeing with each other.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from harness.ci import missing_tool
from harness.forwardauth import cli
from harness.procs import find_tool
from harness.proxies import REPO

pytestmark = pytest.mark.proxy

EXAMPLES = REPO / "examples"
COMPOSE = EXAMPLES / "compose"


@pytest.mark.parametrize("example", ["nginx", "compose"])
def test_example_nginx_conf_passes_nginx_t(tmp_path, example):
    nginx = find_tool("nginx", "/usr/sbin/nginx")
    if not nginx:
        missing_tool("nginx binary not found")
    text = (EXAMPLES / example / "nginx.conf").read_text()
    # Compose service names -> loopback; snippets from the repo; files into tmp.
    text = (text.replace("forwardauth:4180", "127.0.0.1:4180").replace("app:8081", "127.0.0.1:8081")
            .replace("/etc/nginx/snippets", str(REPO / "nginx"))
            .replace("access_log /dev/stdout;", f"access_log {tmp_path}/access.log; proxy_temp_path {tmp_path}/p; "
                     f"client_body_temp_path {tmp_path}/b; fastcgi_temp_path {tmp_path}/f; "
                     f"uwsgi_temp_path {tmp_path}/u; scgi_temp_path {tmp_path}/s;"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"),
                           "-g", f"pid {tmp_path}/nginx.pid;"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def test_example_caddyfile_is_valid(tmp_path):
    caddy = find_tool("caddy")
    if not caddy:
        missing_tool("caddy binary not found")
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin", "CADDY_ADMIN": "off"}
    proc = subprocess.run([caddy, "validate", "--config", str(EXAMPLES / "caddy" / "Caddyfile"),
                           "--adapter", "caddyfile"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Valid configuration" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_compose_mounts_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).resolve().is_file(), f"{name}: {source} does not exist"


def test_compose_forwardauth_config_passes_check(tmp_path):
    """forwardauth.yaml is valid (with its /var/lib paths moved into tmp)."""
    text = (COMPOSE / "forwardauth.yaml").read_text().replace("/var/lib/forwardauth", str(tmp_path))
    cli("keys", "generate", "-o", str(tmp_path / "keys.json"))
    config = tmp_path / "config.yaml"
    config.write_text(text)
    out = cli("check", "-c", str(config))
    assert out.startswith(f"{config}: ok"), out


def test_compose_files_agree(compose):
    """Cookie name, trusted network and public URL match across compose.yaml and forwardauth.yaml."""
    fa = yaml.safe_load((COMPOSE / "forwardauth.yaml").read_text())
    subnet = compose["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert fa["server"]["trusted_proxies"] == [subnet]
    assert compose["services"]["traefik"]["environment"]["FORWARDAUTH_COOKIE"] == fa["session"]["cookie_name"]
    mounted = [v.split(":")[0] for v in compose["services"]["nginx"]["volumes"] if v.endswith("/nginx.conf:ro")]
    assert mounted == ["./nginx.conf"]
    nginx_conf = (COMPOSE / "nginx.conf").read_text()
    auth_host = re.match(r"http://([^:/]+):8080$", fa["server"]["public_url"]).group(1)
    assert re.search(rf"server_name {auth_host}\b", nginx_conf), "public_url host has no nginx server block"
    for proxy in ("nginx", "traefik", "caddy"):
        assert "edge" in compose["services"][proxy]["networks"]
