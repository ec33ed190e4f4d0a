"""Real nginx, Traefik and Caddy in front of the echo app, asking forwardauth.

Each proxy runs the configuration this repository ships, not a copy of it:
nginx includes nginx/forwardauth.conf and nginx/forwardauth-protect.conf,
Traefik loads examples/traefik/traefik.yaml (with the test's address) and
dynamic.yaml, Caddy examples/caddy/Caddyfile (both take their addresses
from the environment). A missing binary is a skip
with a reason outside CI and a failure under CI=true.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .procs import Proc, find_tool, free_port, http_status

REPO = Path(__file__).resolve().parents[2]
NGINX_SNIPPETS = REPO / "nginx"
TRAEFIK_STATIC = REPO / "examples" / "traefik" / "traefik.yaml"
TRAEFIK_DYNAMIC = REPO / "examples" / "traefik" / "dynamic.yaml"
CADDYFILE = REPO / "examples" / "caddy" / "Caddyfile"

PROXIES = ("nginx", "traefik", "caddy")
TOOLS = {"nginx": ("nginx", "/usr/sbin/nginx"), "traefik": ("traefik",), "caddy": ("caddy",)}


class MissingTool(Exception):
    pass


def require(proxy: str) -> str:
    """Path of the proxy's binary, or MissingTool (the caller skips or fails)."""
    found = find_tool(*TOOLS[proxy])
    if not found:
        raise MissingTool(f"{proxy} binary not found (run bash scripts/install.sh --test)")
    return found


@dataclass
class Running:
    name: str
    port: int
    proc: Proc
    auth_port: int | None = None  # where forwardauth's own site (public_url) is served, when not on `port`

    def stop(self) -> None:
        self.proc.stop()


def nginx_conf(workdir: Path, port: int, fa_port: int, app_port: int, server_name: str) -> str:
    """A complete nginx.conf with its own prefix, logs and temp dirs; the shipped snippets do the rest."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    upstream forwardauth {{ server 127.0.0.1:{fa_port}; keepalive 16; }}
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 16; }}
    # As in examples/nginx/nginx.conf: other host names are refused.
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        return 444;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {server_name};
        include {NGINX_SNIPPETS}/forwardauth.conf;
        location / {{
            include {NGINX_SNIPPETS}/forwardauth-protect.conf;
            proxy_set_header Host $host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
        # A static location: the snippet must not take its try_files away
        # (as an `if` inside the location would, for the requests it matches).
        location /api/static/ {{
            include {NGINX_SNIPPETS}/forwardauth-protect.conf;
            root {workdir}/www;
            try_files /file.txt =404;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, fa_port: int, app_port: int, host: str) -> Running:
    binary = require("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    (workdir / "www").mkdir(exist_ok=True)
    (workdir / "www" / "file.txt").write_text("a static file\n")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, fa_port, app_port, host))
    argv = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"]
    # stdout/stderr and the error log share one file: a failure shows both.
    return Running("nginx", port, Proc("nginx", argv, workdir / "error.log"))


def traefik_static(workdir: Path, port: int, log_level: str = "DEBUG") -> Path:
    """examples/traefik/traefik.yaml as shipped, with only the test's address, the
    dynamic file's path and debug logging changed (so its other settings, such
    as aliasHeadersStrategy, are what the tests run with)."""
    static = yaml.safe_load(TRAEFIK_STATIC.read_text())
    static["entryPoints"]["web"]["address"] = f"127.0.0.1:{port}"
    static["providers"]["file"].update(filename=str(TRAEFIK_DYNAMIC), watch=False)
    static["log"] = {"level": log_level}
    static.pop("accessLog", None)
    path = workdir / "traefik.yaml"
    path.write_text(yaml.safe_dump(static, sort_keys=False))
    return path


def start_traefik(workdir: Path, fa_port: int, app_port: int, host: str, cookie: str,
                  log_level: str = "DEBUG") -> Running:
    binary = require("traefik")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, f"--configFile={traefik_static(workdir, port, log_level)}"]
    env = {**os.environ, "APP_HOST": host, "FORWARDAUTH_URL": f"http://127.0.0.1:{fa_port}",
           "APP_URL": f"http://127.0.0.1:{app_port}", "FORWARDAUTH_COOKIE": cookie}
    return Running("traefik", port, Proc("traefik", argv, workdir / "traefik.log", env=env, cwd=workdir))


def start_caddy(workdir: Path, fa_port: int, app_port: int, host: str) -> Running:
    binary = require("caddy")
    port = free_port()
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    auth_port = free_port()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config"), "CADDY_ADMIN": "off",
           "SITE_ADDRESS": f"http://{host}:{port}", "FORWARDAUTH_ADDRESS": f"127.0.0.1:{fa_port}",
           "APP_ADDRESS": f"127.0.0.1:{app_port}", "BIND_ADDRESS": "127.0.0.1",
           "AUTH_SITE_ADDRESS": f"http://127.0.0.1:{auth_port}"}
    argv = [binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    return Running("caddy", port, Proc("caddy", argv, workdir / "caddy.log", env=env, cwd=workdir), auth_port)


def start_nginx_example(workdir: Path, fa_port: int, app_port: int) -> Running:
    """examples/nginx/nginx.conf as shipped (its auth.example.com server serves
    forwardauth's own site), with only the addresses, snippet and file paths
    moved to the test's."""
    binary = require("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = (REPO / "examples" / "nginx" / "nginx.conf").read_text()
    user = "user root;\n" if os.geteuid() == 0 else ""
    text = (user + text.replace("forwardauth:4180", f"127.0.0.1:{fa_port}").replace("app:8081", f"127.0.0.1:{app_port}")
            .replace("listen 8080", f"listen 127.0.0.1:{port}").replace("/etc/nginx/snippets", str(NGINX_SNIPPETS))
            .replace("worker_processes auto;", f"worker_processes 1;\npid {workdir}/nginx.pid;")
            .replace("access_log /dev/stdout;", f"access_log {workdir}/access.log; proxy_temp_path {workdir}/p; "
                     f"client_body_temp_path {workdir}/b; fastcgi_temp_path {workdir}/f; "
                     f"uwsgi_temp_path {workdir}/u; scgi_temp_path {workdir}/s;")
            .replace("error_log stderr;", f"error_log {workdir}/error.log info;"))
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    argv = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"]
    return Running("nginx", port, Proc("nginx", argv, workdir / "error.log"), port)


def start_proxy(name: str, workdir: Path, fa_port: int, app_port: int, host: str, cookie: str) -> Running:
    """Start proxy `name` and wait until an anonymous route answers 200 through it."""
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "nginx":
        running = start_nginx(workdir, fa_port, app_port, host)
    elif name == "traefik":
        running = start_traefik(workdir, fa_port, app_port, host, cookie)
    elif name == "caddy":
        running = start_caddy(workdir, fa_port, app_port, host)
    else:
        raise ValueError(name)
    running.proc.start()
    try:
        # Traefik opens its port before the file provider's routes are live:
        # readiness is "the anonymous route answers 200", not "port open".
        running.proc.wait_until(lambda: http_status(running.port, "/public/ready", f"{host}:{running.port}") == 200,
                                what="serving /public/ready")
    except BaseException:
        running.stop()
        raise
    return running


def start_echo_app(workdir: Path) -> Running:
    port = free_port()
    argv = [sys.executable, str(REPO / "examples" / "echo_app.py"), "--listen", f"127.0.0.1:{port}"]
    proc = Proc("echo_app", argv, workdir / "echo_app.log").start()
    try:
        proc.wait_until(lambda: http_status(port, "/") == 200, what="answering")
    except BaseException:
        proc.stop()
        raise
    return Running("echo_app", port, proc)
