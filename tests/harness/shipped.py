"""The shipped example configs, run as they are with only addresses and names changed.

proxies.py runs nginx with a config of the harness's own around the shipped
snippets; the path and header tests need the whole example files instead
(their /static/ and /oauth2/ locations, their server blocks), so this takes
examples/nginx/nginx.conf, examples/compose/nginx.conf or
examples/local/nginx.conf and replaces only: listen ports, upstream
addresses, server names, the snippets' directory, log/pid/temp paths and the
static directory. Every replacement must find its text, so an example that
drifts from what the tests rewrite fails loudly instead of being tested
half-changed. Traefik and Caddy already take their addresses from the
environment (proxies.start_traefik / start_caddy).
"""

from __future__ import annotations

import os
from pathlib import Path

from .procs import Proc, free_port, http_status
from .proxies import REPO, Running, require, start_caddy, start_traefik

EXAMPLES = REPO / "examples"
NGINX_EXAMPLES = ("nginx", "compose", "local")
STATIC_FILE = "hello.txt"
STATIC_BODY = b"a public static file\n"


class ExampleDrift(AssertionError):
    pass


def _replace(text: str, old: str, new: str, where: str) -> str:
    if old not in text:
        raise ExampleDrift(f"{where}: expected text not found (update tests/harness/shipped.py): {old!r}")
    return text.replace(old, new)


def nginx_example_conf(example: str, workdir: Path, port: int, fa_port: int, app_port: int,
                       app_host: str, auth_host: str = "auth.test") -> str:
    """examples/<example>/nginx.conf with only addresses, names and file paths changed."""
    where = f"examples/{example}/nginx.conf"
    text = (EXAMPLES / example / "nginx.conf").read_text()
    static = workdir / "static"
    tmp = (f"client_body_temp_path {workdir}/tmp/body; proxy_temp_path {workdir}/tmp/proxy; "
           f"fastcgi_temp_path {workdir}/tmp/fastcgi; uwsgi_temp_path {workdir}/tmp/uwsgi; "
           f"scgi_temp_path {workdir}/tmp/scgi;")
    user = "user root;\n" if os.geteuid() == 0 else ""
    if example == "local":
        text = _replace(text, "../../nginx/", f"{REPO}/nginx/", where)
        text = _replace(text, "server 127.0.0.1:4180;", f"server 127.0.0.1:{fa_port};", where)
        text = _replace(text, "server 127.0.0.1:8081;", f"server 127.0.0.1:{app_port};", where)
        text = _replace(text, "listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}", where)
        text = _replace(text, "server_name 127.0.0.1;", f"server_name {app_host};", where)
        text = _replace(text, "daemon off;\n", f"daemon off;\n{user}", where)
        return text
    text = _replace(text, "worker_processes auto;", f"{user}worker_processes 1;\npid {workdir}/nginx.pid;", where)
    text = _replace(text, "access_log /dev/stdout;", f"access_log {workdir}/access.log; {tmp}", where)
    text = _replace(text, "server forwardauth:4180;", f"server 127.0.0.1:{fa_port};", where)
    text = _replace(text, "server app:8081;", f"server 127.0.0.1:{app_port};", where)
    text = _replace(text, "listen 8080", f"listen 127.0.0.1:{port}", where)
    text = _replace(text, "/etc/nginx/snippets", str(REPO / "nginx"), where)
    text = _replace(text, "server_name app.localhost app.example.com;", f"server_name {app_host};", where)
    alias = {"nginx": "alias /srv/app/static/;", "compose": "alias /usr/share/nginx/html/;"}[example]
    text = _replace(text, alias, f"alias {static}/;", where)
    if example == "nginx":
        text = _replace(text, "server_name auth.localhost auth.example.com;", f"server_name {auth_host};", where)
    return text


def start_nginx_example(example: str, workdir: Path, fa_port: int, app_port: int, app_host: str) -> Running:
    binary = require("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    (workdir / "static").mkdir(exist_ok=True)
    (workdir / "static" / STATIC_FILE).write_bytes(STATIC_BODY)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_example_conf(example, workdir, port, fa_port, app_port, app_host))
    argv = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    if example != "local":  # examples/local/nginx.conf says `daemon off;` itself
        argv += ["-g", "daemon off;"]
    return Running("nginx", port, Proc(f"nginx-{example}", argv, workdir / "error.log"))


def start_shipped(proxy: str, workdir: Path, fa_port: int, app_port: int, app_host: str, cookie: str,
                  nginx_example: str = "nginx") -> Running:
    """`proxy` with its shipped example config; ready once /public/ready answers 200 through it."""
    workdir.mkdir(parents=True, exist_ok=True)
    if proxy == "nginx":
        running = start_nginx_example(nginx_example, workdir, fa_port, app_port, app_host)
    elif proxy == "traefik":
        # INFO: at DEBUG Traefik spends more time logging than proxying.
        running = start_traefik(workdir, fa_port, app_port, app_host, cookie, log_level="INFO")
    elif proxy == "caddy":
        running = start_caddy(workdir, fa_port, app_port, app_host)
    else:
        raise ValueError(proxy)
    running.proc.start()
    try:
        running.proc.wait_until(
            lambda: http_status(running.port, "/public/ready", f"{app_host}:{running.port}") == 200,
            what="serving /public/ready")
    except BaseException:
        running.stop()
        raise
    return running
