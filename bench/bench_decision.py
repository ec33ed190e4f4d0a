"""How much does forwardauth cost per request, and does the policy size matter?

Two measurements in one run:

1. HTTP: real nginx (the shipped nginx/ snippets, auth_request to a static
   200 file) in front of (a) forwardauth /auth/nginx with a valid session
   cookie and a generated 1,000-rule policy, and (b) bench/bare_app.py, an
   aiohttp+uvloop handler that just answers 200. Both nginx instances use the
   same config; only the auth backend differs. wrk drives each in turn and
   the table shows requests/s, p50/p99 latency and the ratio a/b.
   forwardauth runs with one worker, like the bare app.
2. Policy: forwardauth's decision (Policy.match and decide(), in-process, no
   I/O) for a small and a large generated policy, per call, and their ratio.
   The host index should keep the large policy close to the small one.

Run from the repository root with the venv's Python:

    .venv/bin/python bench/bench_decision.py            # ~80 s
    .venv/bin/python bench/bench_decision.py --rounds 9 --duration 10 --connections 64
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test harness starts servers the same way

from harness.forwardauth import COOKIE, ForwardAuth, make_config  # noqa: E402
from harness.procs import Proc, find_tool, free_port, http_status  # noqa: E402

BENCH_PATH = "/dashboard"


# --- policy generation --------------------------------------------------------


def host_name(i: int) -> str:
    """Every tenth host is a wildcard domain, the rest exact hosts."""
    return f"*.svc{i:05d}.bench.test" if i % 10 == 0 else f"app{i:05d}.bench.test"


def make_rules(n: int) -> list[dict]:
    """`n` rules as an operator might write them: one host-less rule, then per host
    a public prefix, an admin area (mfa, fresh, admins), an API with per-method
    levels and a catch-all at `password`."""
    rules: list[dict] = [{"name": "health", "paths": ["/healthz"], "allow": "anonymous"}]
    i = 0
    while len(rules) < n:
        h = [host_name(i)]
        block = [
            {"hosts": h, "paths": ["/static/"], "allow": "anonymous"},
            {"hosts": h, "paths": ["/admin/"], "level": "mfa", "max_age": "15m", "groups": ["admins"]},
            {"hosts": h, "paths": ["/api/**"], "methods_levels": {"GET": "password", "POST": "mfa"}},
            {"hosts": h, "level": "password"},
        ]
        rules.extend(block[: n - len(rules)])
        i += 1
    return rules


def full_exact_hosts(n: int) -> list[str]:
    """Exact hosts whose four rules all made it into an `n`-rule policy."""
    complete = (n - 1) // 4
    return [host_name(i) for i in range(complete) if i % 10 != 0]


def target_host(n: int) -> str:
    """A host in the middle of the policy: its catch-all rule is the one matched."""
    hosts = full_exact_hosts(n)
    if not hosts:
        raise SystemExit(f"--rules {n}: too few rules for a complete host (need at least 9)")
    return hosts[len(hosts) // 2]


def policy_of(n: int) -> dict:
    return {"default": "deny", "rules": make_rules(n)}


# --- HTTP benchmark -----------------------------------------------------------


def nginx_conf(workdir: Path, port: int, auth_port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    open_file_cache max=16;
    upstream forwardauth {{ server 127.0.0.1:{auth_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {workdir}/www;
        include {REPO}/nginx/forwardauth.conf;
        location / {{
            include {REPO}/nginx/forwardauth-protect.conf;
            default_type text/plain;
            try_files /ok.txt =404;
        }}
    }}
}}
"""


def start_nginx(binary: str, workdir: Path, auth_port: int, host: str) -> tuple[Proc, int]:
    for d in ("tmp", "www"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    (workdir / "www" / "ok.txt").write_text("ok\n")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, auth_port))
    proc = Proc(f"nginx({workdir.name})", [binary, "-p", workdir, "-c", conf, "-e", workdir / "error.log",
                                           "-g", "daemon off;"], workdir / "error.log").start()
    proc.wait_until(lambda: http_status(port, "/healthz", host) in (200, 401, 403), what="answering")
    return proc, port


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m.group(1)} non-2xx")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(f"socket errors: {m.group(1)}")
    return WrkResult(rps, p50, p99, total, "; ".join(errors))


# Every request a path never asked before (/dashboard/<thread>/<n>): forwardauth
# cannot answer from its memo (memo.py), so this measures the full decision.
NEW_PATHS_LUA = f"""
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args) n = 0 end
function request() n = n + 1; return wrk.format(nil, "{BENCH_PATH}/" .. tid .. "/" .. n) end
"""


def wrk(binary: str, port: int, host: str, cookie: str, args, seconds: float, script: Path | None = None) -> WrkResult:
    cmd = [binary, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Host: {host}", "-H", f"Cookie: {COOKIE}={cookie}", "-H", "Accept: application/json",
           *(["-s", str(script)] if script else []), f"http://127.0.0.1:{port}{BENCH_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def get_status(port: int, host: str, cookie: str | None) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Host": host, "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    conn.request("GET", BENCH_PATH, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def body_length(fa_port: int, host: str, cookie: str) -> int:
    """Bytes of body in forwardauth's 200 answer to /auth/nginx (asked directly)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fa_port, timeout=5)
    conn.request("GET", "/auth/nginx", headers={"X-Original-URL": f"http://{host}{BENCH_PATH}",
                                                "X-Original-Method": "GET", "Cookie": f"{COOKIE}={cookie}"})
    body = conn.getresponse().read()
    conn.close()
    return len(body)


def http_bench(args, workdir: Path) -> dict:
    nginx = find_tool("nginx", "/usr/sbin/nginx")
    wrk_bin = find_tool("wrk")
    if not nginx or not wrk_bin:
        raise SystemExit("needs nginx and wrk (Debian: apt-get install nginx wrk)")
    host = target_host(args.rules)
    procs: list[Proc] = []
    try:
        fa = ForwardAuth(workdir / "forwardauth", policy=policy_of(args.rules))
        procs.append(fa.proc)
        fa.start()
        cookie = fa.issue("bench", "password", email="bench@example.test", groups=("dev",), name="Bench")

        bare_port = free_port()
        bare = Proc("bare_app", [sys.executable, REPO / "bench" / "bare_app.py", "--listen",
                                 f"127.0.0.1:{bare_port}", "--body", args.bare_body], workdir / "bare_app.log").start()
        procs.append(bare)
        bare.wait_until(lambda: http_status(bare_port, "/") == 200, what="answering")

        ng_a, port_a = start_nginx(nginx, workdir / "nginx-forwardauth", fa.port, host)
        procs.append(ng_a)
        ng_b, port_b = start_nginx(nginx, workdir / "nginx-bare", bare_port, host)
        procs.append(ng_b)

        # The benchmark only means something if (a) really checks the cookie.
        checks = {"(a) with cookie": (get_status(port_a, host, cookie), 200),
                  "(a) without cookie": (get_status(port_a, host, None), 401),
                  "(b) bare": (get_status(port_b, host, cookie), 200)}
        for what, (got, want) in checks.items():
            if got != want:
                raise SystemExit(f"sanity check {what}: status {got}, expected {want}\n{fa.proc.log()}")

        results = {"fa_body": body_length(fa.port, host, cookie)}
        new_paths = workdir / "new_paths.lua"
        new_paths.write_text(NEW_PATHS_LUA)
        for port in (port_a, port_b):
            if args.warmup > 0:
                wrk(wrk_bin, port, host, cookie, args, args.warmup)
        # (a) and (b) take turns, `rounds` times: the machine's other load then
        # falls on both alike, and the ratio of each round is a fair one.
        for key in ("forwardauth", "bare", "forwardauth_new", "bare_new"):
            results[key] = []
        for i in range(args.rounds):
            order = (("forwardauth", port_a), ("bare", port_b))
            for key, port in order if i % 2 == 0 else reversed(order):  # neither always goes first
                results[key].append(wrk(wrk_bin, port, host, cookie, args, args.duration))
        for key, port in (("forwardauth_new", port_a), ("bare_new", port_b)):
            results[key].append(wrk(wrk_bin, port, host, cookie, args, args.duration, new_paths))
        return results
    finally:
        for p in reversed(procs):
            p.stop()


# --- policy decision timing ---------------------------------------------------


def per_call_us(fn, budget: float = 0.5, repeats: int = 7) -> float:
    """Best-of-`repeats` time per call of `fn`, in microseconds (GC off, like timeit)."""
    gc.collect()
    gc.disable()
    try:
        return _per_call_us(fn, budget, repeats)
    finally:
        gc.enable()


def _per_call_us(fn, budget: float, repeats: int) -> float:
    n = 1
    while True:  # calibrate: enough calls to fill the budget
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if (elapsed := time.perf_counter() - t) > budget / repeats or n > 10_000_000:
            break
        n *= 4
    best = elapsed / n
    for _ in range(repeats - 1):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def policy_bench(sizes: list[int], workdir: Path) -> list[tuple[int, float, float, float]]:
    return [_policy_row(n, workdir) for n in sizes]


def _policy_row(n: int, workdir: Path) -> tuple[int, float, float, float]:
    """(rules, match hot, decide hot, decide mix) for an `n`-rule policy, in microseconds per call."""
    from forwardauth.composition import load_config
    from forwardauth.core.decision import Outcome, decide
    from forwardauth.core.request import build
    from forwardauth.core.runtime import Runtime

    cfg = load_config(make_config(workdir / "policy", free_port(), policy=policy_of(n)))
    codec = Runtime.build(cfg).codec
    now = time.time()
    session = codec.new("bench", "password", now, groups=("dev",))
    host = target_host(n)

    def req(h: str, path: str, method: str = "GET"):
        return build(method=method, scheme="https", host=h, uri=path, forwarded_for=None, peer=None,
                     trusted=(), accept="application/json")

    hot = req(host, BENCH_PATH)
    d = decide(hot, session, cfg.policy, cfg.levels, now)
    if d.outcome is not Outcome.ALLOW or d.rule is None or d.rule.hosts != (host,):
        raise SystemExit(f"{n} rules: expected {host}'s catch-all to allow, got {d.outcome} ({d.reason})")
    policy, levels = cfg.policy, cfg.levels
    # A mix of hosts and paths, as a busy proxy would send.
    hosts = full_exact_hosts(n)
    paths = ("/dashboard", "/api/items/7", "/static/app.js", "/admin/users")
    mix = [req(hosts[i % len(hosts)], paths[i % 4]) for i in range(1000)]
    state = {"i": 0}

    def match_hot():
        policy.match(hot.host, hot.path, hot.method, hot.client)

    def decide_hot():
        decide(hot, session, policy, levels, now)

    def decide_mix():
        r = mix[state["i"] % 1000]
        state["i"] += 1
        decide(r, session, policy, levels, now)

    return n, per_call_us(match_hot), per_call_us(decide_hot), per_call_us(decide_mix)


# --- main ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Targets (issue 2): ratio a/b >= 0.85; large/small policy <= 1.5x.")
    p.add_argument("--duration", type=float, default=5, help="seconds of wrk per target and round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of (a) then (b); the median ratio is shown "
                                                        "(default %(default)s)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk before each measurement (default %(default)s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    p.add_argument("--rules", type=int, default=1000, help="rules in forwardauth's policy for the HTTP run (default %(default)s)")
    p.add_argument("--policy-sizes", default="10,10000", help="policy sizes to time, small,large (default %(default)s)")
    p.add_argument("--bare-body", default="", metavar="TEXT",
                   help="body of the bare app's 200 (default empty; 'OK\\n' to match a body-carrying answer)")
    p.add_argument("--skip-http", action="store_true", help="only time the policy decision")
    p.add_argument("--skip-policy", action="store_true", help="only run the HTTP benchmark")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.policy_sizes.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-bench-"))
    print(f"forwardauth benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, work dir {workdir}")
    try:
        if not args.skip_http:
            print(f"\nHTTP through nginx auth_request: wrk -t{args.threads} -c{args.connections} "
                  f"-d{args.duration:g}s x {args.rounds} rounds, {args.rules}-rule policy, host {target_host(args.rules)}, "
                  f"forwardauth with 1 worker")
            res = http_bench(args, workdir)
            ratios = [x.rps / y.rps for x, y in zip(res["forwardauth"], res["bare"], strict=True)]
            mid = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # the median round
            a, b = res["forwardauth"][mid], res["bare"][mid]
            print(f"  {'':34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}  errors")
            print(f"  {'(a) forwardauth /auth/nginx':34}{a.rps:>10.0f}{a.p50_ms:>10.2f}{a.p99_ms:>10.2f}  {a.errors or '-'}")
            print(f"  {'(b) bare aiohttp+uvloop 200':34}{b.rps:>10.0f}{b.p50_ms:>10.2f}{b.p99_ms:>10.2f}  {b.errors or '-'}")
            ratio = ratios[mid]
            print(f"  {'ratio a/b (requests/s)':34}{ratio:>10.2f}   target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'}")
            print(f"  (median of {len(ratios)} rounds, a and b taking turns: "
                  + ", ".join(f"{r:.2f}" for r in ratios) + ")")
            a2, b2 = res["forwardauth_new"][0], res["bare_new"][0]
            print(f"  every request a new path ({BENCH_PATH}/<thread>/<n>): nothing answered from memory")
            print(f"  {'(a) forwardauth /auth/nginx':34}{a2.rps:>10.0f}{a2.p50_ms:>10.2f}{a2.p99_ms:>10.2f}  {a2.errors or '-'}")
            print(f"  {'(b) bare aiohttp+uvloop 200':34}{b2.rps:>10.0f}{b2.p50_ms:>10.2f}{b2.p99_ms:>10.2f}  {b2.errors or '-'}")
            print(f"  {'ratio a/b (requests/s)':34}{a2.rps / b2.rps:>10.2f}   (context: the cost of a full decision)")
            if res["fa_body"]:
                bare_len = len(args.bare_body.encode().decode("unicode_escape"))
                print(f"  note: forwardauth's 200 answer has a {res['fa_body']}-byte body; nginx does not read the body"
                      " of an auth_request answer,\n        so it closes the upstream connection after every check"
                      f" (the bare app's body: {bare_len} bytes).")
        if not args.skip_policy:
            rows = policy_bench(sizes, workdir)
            print("\nPolicy decision, in-process, microseconds per call (best of 7, GC off)")
            print(f"  {'rules':>8}{'match() hot':>14}{'decide() hot':>14}{'decide() mix':>14}")
            for n, m, d, x in rows:
                print(f"  {n:>8}{m:>14.2f}{d:>14.2f}{x:>14.2f}")
            (n0, m0, d0, x0), (n1, m1, d1, x1) = rows[0], rows[-1]
            ratios = (m1 / m0, d1 / d0, x1 / x0)
            print(f"  {f'{n1}/{n0}':>8}" + "".join(f"{r:>13.2f}x" for r in ratios))
            print(f"  target: decide() hot within 1.5x -> {'met' if ratios[1] <= 1.5 else 'NOT met'} "
                  f"({ratios[1]:.2f}x)")
            print("  hot: the same request every time (the matched rule is one host's catch-all in both sizes);")
            print(f"  mix: 1,000 requests over every exact host ({len(full_exact_hosts(n0))} vs "
                  f"{len(full_exact_hosts(n1))}) and 4 paths, so it also measures a bigger working set")
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
