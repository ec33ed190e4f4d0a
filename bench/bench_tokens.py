"""Bearer tokens vs session cookies, and two replicas on Redis vs one on SQLite.

Two measurements in one run, all through real nginx (the shipped nginx/
snippets, auth_request in front of a static 200 file), driven by wrk:

1. Same nginx, same forwardauth (one worker, SQLite state), same route
   (`/api/x`, level password): decisions/s with a session cookie, then with
   a bearer token (`Authorization: Bearer fa1_...`). Target: token >= 0.8 of
   cookie. Each is measured twice, interleaved, and the better run counts.
2. Token decisions/s with one forwardauth on SQLite vs two forwardauth
   processes sharing a Redis (nginx balancing over both).

Run from the repository root with the venv's Python:

    .venv/bin/python bench/bench_tokens.py                 # about 40 s
    .venv/bin/python bench/bench_tokens.py --duration 10 --connections 64

Needs nginx, wrk and redis-server (bash scripts/install.sh --test).
Everything binds 127.0.0.1 and stops when the script ends.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_decision import WrkResult, nginx_conf, parse_wrk  # noqa: E402

from harness.procs import Proc, find_tool, free_port, http_status  # noqa: E402
from harness.redis import RedisServer  # noqa: E402
from harness.tokens import APP, TokenServer  # noqa: E402

PATH = "/api/x"


def start_nginx(binary: str, workdir: Path, upstreams: list[int]) -> tuple[Proc, int]:
    for d in ("tmp", "www"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    (workdir / "www" / "ok.txt").write_text("ok\n")
    port = free_port()
    conf = nginx_conf(workdir, port, upstreams[0])
    servers = " ".join(f"server 127.0.0.1:{p};" for p in upstreams)
    conf = conf.replace(f"server 127.0.0.1:{upstreams[0]};", servers)
    (workdir / "nginx.conf").write_text(conf)
    proc = Proc(f"nginx({workdir.name})", [binary, "-p", workdir, "-c", workdir / "nginx.conf", "-e",
                                           workdir / "error.log", "-g", "daemon off;"], workdir / "error.log").start()
    proc.wait_until(lambda: http_status(port, "/public/x", APP) == 200, what="answering")
    return proc, port


def wrk(binary: str, port: int, header: str, args, seconds: float) -> WrkResult:
    cmd = [binary, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Host: {APP}", "-H", header, "-H", "Accept: application/json", f"http://127.0.0.1:{port}{PATH}"]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout)


def status(port: int, header: str | None) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    h = {"Host": APP}
    if header:
        k, _, v = header.partition(": ")
        h[k] = v
    conn.request("GET", PATH, headers=h)
    s = conn.getresponse().status
    conn.close()
    return s


def check(port: int, header: str, what: str) -> None:
    import time

    deadline = time.monotonic() + 5
    while status(port, header) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = status(port, header), status(port, None)
    if got != (200, 401):
        raise SystemExit(f"{what}: expected 200 with the credential and 401 without, got {got}")


def best(binary, port, header, args) -> WrkResult:
    runs = [wrk(binary, port, header, args, args.duration) for _ in range(2)]
    return max(runs, key=lambda r: r.rps)


def row(name: str, r: WrkResult) -> str:
    return f"{name:<38} {r.rps:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}  {r.errors or '-'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    nginx_bin, wrk_bin = find_tool("nginx", "/usr/sbin/nginx"), find_tool("wrk")
    if not nginx_bin or not wrk_bin:
        raise SystemExit("needs nginx and wrk (bash scripts/install.sh --test)")
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        work = Path(tmp)
        procs: list = []
        try:
            # 1. cookie vs token, same nginx, same forwardauth.
            fa = TokenServer(work / "sqlite", tokens={"last_used_flush": "5s"})
            fa.account("bench")
            token = fa.token("bench")
            cookie = fa.cli("session", "issue", "--user", "bench", "--level", "password").strip()
            fa.start()
            procs.append(fa)
            ngx, port = start_nginx(nginx_bin, work / "nginx1", [fa.port])
            procs.append(ngx)
            cookie_h, token_h = f"Cookie: forwardauth={cookie}", f"Authorization: Bearer {token}"
            check(port, cookie_h, "cookie")
            check(port, token_h, "token")
            wrk(wrk_bin, port, cookie_h, args, 2)  # warm-up
            wrk(wrk_bin, port, token_h, args, 2)
            runs = {"cookie": [], "token": []}
            for _ in range(2):  # interleaved, so drift hits both alike
                runs["cookie"].append(wrk(wrk_bin, port, cookie_h, args, args.duration))
                runs["token"].append(wrk(wrk_bin, port, token_h, args, args.duration))
            c = max(runs["cookie"], key=lambda r: r.rps)
            t = max(runs["token"], key=lambda r: r.rps)
            sqlite_token = t
            ngx.stop()
            fa.stop()

            # 2. two replicas on Redis.
            with RedisServer(work / "redis") as redis_server:
                a = TokenServer(work / "redis-fa", state=redis_server.url, tokens={"last_used_flush": "5s"})
                b = TokenServer(work / "redis-fa", state=redis_server.url, tokens={"last_used_flush": "5s"})
                a.account("bench")
                rtoken = a.token("bench")
                a.start()
                procs.append(a)
                b.start()
                procs.append(b)
                ngx2, port2 = start_nginx(nginx_bin, work / "nginx2", [a.port, b.port])
                procs.append(ngx2)
                rh = f"Authorization: Bearer {rtoken}"
                check(port2, rh, "token on redis")
                wrk(wrk_bin, port2, rh, args, 2)
                r2 = best(wrk_bin, port2, rh, args)
                ngx2.stop()
                a.stop()
                b.stop()
        finally:
            for p in procs:
                p.stop()
    print(f"wrk: {args.connections} connections, {args.threads} threads, {args.duration:g}s per run, "
          f"nginx -> forwardauth {PATH} (level password)")
    print(f"{'':<38} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}  errors")
    print(row("cookie, 1 worker, SQLite", c))
    print(row("bearer token, 1 worker, SQLite", t))
    print(row("bearer token, 2 replicas, Redis", r2))
    print(f"token / cookie:            {t.rps / c.rps:.2f}  (target >= 0.80)")
    print(f"2 replicas Redis / 1 SQLite: {r2.rps / sqlite_token.rps:.2f}  (token decisions; {_cores()} cores here)")
    return 0


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())
