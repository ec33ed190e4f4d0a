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
import math
import os
import re
import shutil
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
    cpu_us: float = 0.0  # the backend's CPU time per request (all its processes), when measured


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


# Every request a path never asked before (/dashboard/<thread>/<n>) and the next
# user's cookie (one Cookie header value a line in the cookies file); each wrk
# thread starts elsewhere in the list. forwardauth cannot answer from its memo
# (memo.py), so this measures the full decision: what users meet when their
# working set is larger than the memo.
COLD_LUA = """
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args)
  cookies = {}
  for line in io.lines("{cookies}") do cookies[#cookies + 1] = line end
  n = 0
  first = math.floor(#cookies * tid / {threads})
end
function request()
  n = n + 1
  wrk.headers["Cookie"] = cookies[(first + n) % #cookies + 1]
  return wrk.format(nil, "{path}/" .. tid .. "/" .. n)
end
"""


def cold_script(workdir: Path, name: str, cookies: list[str], threads: int) -> Path:
    """A wrk script for the cold path over `cookies` (full Cookie header values)."""
    (workdir / f"cookies-{name}.txt").write_text("\n".join(cookies) + "\n")
    script = workdir / f"cold-{name}.lua"
    script.write_text(COLD_LUA.replace("{cookies}", str(workdir / f"cookies-{name}.txt"))
                      .replace("{threads}", str(threads)).replace("{path}", BENCH_PATH))
    return script


def mint_cookies(config: Path, users: int) -> list[str]:
    """`users` sealed forwardauth sessions, one per user, as Cookie header values:
    what `forwardauth session issue` does (codec.new, seal, and a check that the
    server will open it), in one process instead of thousands."""
    from forwardauth.composition import load_config
    from forwardauth.core.runtime import Runtime

    codec = Runtime.build(load_config(config)).codec
    now = time.time()
    out = []
    for i in range(users):
        sub = f"user{i:05d}"
        value = codec.seal(codec.new(sub, "password", now, email=f"{sub}@example.test", name=f"User {i:05d}",
                                     groups=("dev",), source="cli"))
        if codec.open(value, now).session is None:
            raise SystemExit(f"forwardauth does not open the session it sealed for {sub}")
        out.append(f"{COOKIE}={value}")
    return out


def wrk(binary: str, port: int, host: str, cookie: str | None, args, seconds: float,
        script: Path | None = None) -> WrkResult:
    """`cookie`: a full Cookie header value (the cold script sets its own)."""
    cmd = [binary, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Host: {host}", "-H", "Accept: application/json",
           *(["-H", f"Cookie: {cookie}"] if cookie else []),
           *(["-s", str(script)] if script else []), f"http://127.0.0.1:{port}{BENCH_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def get_status(port: int, host: str, cookie: str | None, path: str = BENCH_PATH) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Host": host, "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("GET", path, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def body_length(fa_port: int, host: str, cookie: str) -> int:
    """Bytes of body in forwardauth's 200 answer to /auth/nginx (asked directly)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fa_port, timeout=5)
    conn.request("GET", "/auth/nginx", headers={"X-Original-URL": f"http://{host}{BENCH_PATH}",
                                                "X-Original-Method": "GET", "Cookie": cookie})
    body = conn.getresponse().read()
    conn.close()
    return len(body)


def profile(pid: int, seconds: float, out: Path, run) -> list[tuple[str, float, float]]:
    """py-spy samples of process `pid` while `run()` drives it: the functions with
    the most samples on the stack (total) and at its top (self), as shares."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    rec = subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                            "--rate", "500", "--format", "raw", "--nonblocking", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    run()
    rec.wait(timeout=seconds + 60)
    total: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [re.sub(r" \((/[^)]*/)?([^/)]+):\d+\)$", r" (\2)", f) for f in stack.split(";")]
        samples += n
        for f in set(frames):
            total[f] = total.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    rows = sorted(total, key=total.__getitem__, reverse=True)
    return [(f, total[f] / samples, own.get(f, 0) / samples) for f in rows]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its children's, all threads (Linux /proc)."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def http_bench(args, workdir: Path) -> dict:
    nginx = find_tool("nginx", "/usr/sbin/nginx")
    wrk_bin = find_tool("wrk")
    if not nginx or not wrk_bin:
        raise SystemExit("needs nginx and wrk (Debian: apt-get install nginx wrk)")
    host = target_host(args.rules)
    procs: list[Proc] = []
    try:
        fas: dict[str, ForwardAuth] = {}
        variants = [("forwardauth" if w == args.workers[0] else f"forwardauth-{w}w", w, args.source)
                    for w in args.workers] + ([("before", 1, args.before)] if args.before else [])
        for name, w, source in variants:
            fa = ForwardAuth(workdir / name, policy=policy_of(args.rules), extra=args.fa_extra)
            if source:  # another checkout's forwardauth (e.g. main's, for a before/after in one run)
                # Run from there too: `python -m` puts the working directory ahead of PYTHONPATH.
                fa.proc.env = {**os.environ, "PYTHONPATH": str(Path(source).resolve())}
                fa.proc.cwd = str(Path(source).resolve())
            if w > 1:
                fa.proc.argv += ["--workers", str(w)]
            elif args.cpu is not None:
                fa.proc.argv = ["taskset", "-c", args.cpu, *fa.proc.argv]
            procs.append(fa.proc)
            fa.start()
            fas[name] = fa
        fa = fas["forwardauth"]
        value = fa.issue("bench", "password", email="bench@example.test", groups=("dev",), name="Bench")
        cookie = f"{COOKIE}={value}"
        users = mint_cookies(fa.config, args.users)
        for other in fas.values():  # one key ring for all, so that each opens the same cookies
            if other is not fa:
                other.proc.stop()
                (other.workdir / "keys.json").write_bytes((fa.workdir / "keys.json").read_bytes())
                other.start()

        bare_port = free_port()
        pin = ["taskset", "-c", args.cpu] if args.cpu is not None else []
        bare = Proc("bare_app", [*pin, sys.executable, REPO / "bench" / "bare_app.py", "--listen",
                                 f"127.0.0.1:{bare_port}", "--body", args.bare_body], workdir / "bare_app.log").start()
        procs.append(bare)
        bare.wait_until(lambda: http_status(bare_port, "/") == 200, what="answering")

        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for name, f in fas.items():
            ng, ports[name] = start_nginx(nginx, workdir / f"nginx-{name}", f.port, host)
            procs.append(ng)
            pids[name] = f.proc.popen.pid
        ng_b, ports["bare"] = start_nginx(nginx, workdir / "nginx-bare", bare_port, host)
        procs.append(ng_b)
        pids["bare"] = bare.popen.pid

        # The benchmark only means something if (a) really checks the cookie.
        checks = {"(b) bare": (get_status(ports["bare"], host, cookie), 200)}
        for name in fas:
            port = ports[name]
            checks.update({f"{name} with cookie": (get_status(port, host, cookie), 200),
                           f"{name} without cookie": (get_status(port, host, None), 401),
                           f"{name} forged cookie": (get_status(port, host, cookie[:-8] + "AAAAAAAA"), 401)})
            for i in range(0, len(users), max(1, len(users) // 10)):
                checks[f"{name} user {i}, new path"] = (get_status(port, host, users[i], f"{BENCH_PATH}/check/{i}"),
                                                        200)
        for what, (got, want) in checks.items():
            if got != want:
                raise SystemExit(f"sanity check {what}: status {got}, expected {want}\n{fa.proc.log()}")

        results: dict = {"fa_body": body_length(fa.port, host, cookie), "targets": [*fas, "bare"]}
        script = cold_script(workdir, "forwardauth", users, args.threads)
        targets = [(name, ports[name]) for name in results["targets"]]

        def run(mode: str, name: str, seconds: float) -> WrkResult:
            before = cpu_seconds(pids[name])
            if mode == "hot":
                r = wrk(wrk_bin, ports[name], host, cookie, args, seconds)
            else:
                r = wrk(wrk_bin, ports[name], host, None, args, seconds, script)
            r.cpu_us = (cpu_seconds(pids[name]) - before) / max(1, r.requests) * 1e6
            return r

        if args.warmup > 0:
            for mode in args.modes:
                for name, _ in targets:
                    run(mode, name, args.warmup)
        if args.profile:
            for mode in args.modes:
                results["profile", mode] = profile(fa.proc.popen.pid, args.profile, workdir / f"profile-{mode}.txt",
                                                   lambda m=mode: run(m, "forwardauth", args.profile))
        # (a) and (b) take turns, `rounds` times: the machine's other load then
        # falls on both alike, and the ratio of each round is a fair one.
        for mode in args.modes:
            for key, _ in targets:
                results[mode, key] = []
        for i in range(args.rounds):
            for mode in args.modes:
                for key, _ in targets if i % 2 == 0 else reversed(targets):  # none always goes first
                    results[mode, key].append(run(mode, key, args.duration))
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


def policy_bench(sizes: list[int], workdir: Path, rounds: int = 7) -> list[tuple[int, float, float, float]]:
    from forwardauth.composition import load_config
    from forwardauth.core.decision import Outcome, decide
    from forwardauth.core.request import build
    from forwardauth.core.runtime import Runtime

    fns = []
    for n in sizes:
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

        def match_hot(policy=policy, hot=hot):
            policy.match(hot.host, hot.path, hot.method, hot.client)

        def decide_hot(policy=policy, hot=hot, session=session, levels=levels, now=now):
            decide(hot, session, policy, levels, now)

        def decide_mix(policy=policy, mix=mix, state=state, session=session, levels=levels, now=now):
            r = mix[state["i"] % 1000]
            state["i"] += 1
            decide(r, session, policy, levels, now)

        fns.append((n, (match_hot, decide_hot, decide_mix)))
    # Each function timed in turn with its counterpart of the other size, round
    # after round, the best round counting: the machine's load falls on both.
    best = {(n, i): math.inf for n, group in fns for i in range(3)}
    for _ in range(rounds):
        for i in range(3):
            for n, group in fns:
                best[n, i] = min(best[n, i], per_call_us(group[i], budget=0.2, repeats=3))
    return [(n, best[n, 0], best[n, 1], best[n, 2]) for n, _ in fns]


# --- main ---------------------------------------------------------------------

MODES = {
    "hot": ("hot path: one URL, one cookie (answered from the memo)", 0.95),
    "cold": ("cold path: every request a new path, the cookies of --users users in turn", 0.70),
}


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def median_round(a: list[WrkResult], b: list[WrkResult]) -> tuple[int, list[float]]:
    ratios = [x.rps / y.rps for x, y in zip(a, b, strict=True)]
    return sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2], ratios


def report_http(args, res: dict) -> dict[str, float]:
    """Print each mode's median round and every round's ratio; return the median ratios."""
    out = {}
    for mode in args.modes:
        if ("profile", mode) in res:
            print(f"\n  py-spy profile of the forwardauth worker, {mode} path ({args.profile:g} s): "
                  "share of samples, on the stack (total) and at its top (self)")
            for name, total, own in res["profile", mode][:args.profile_top]:
                print(f"    {total:6.1%} {own:6.1%}  {name[:110]}")
    for mode in args.modes:
        title, target = MODES[mode]
        a, b = res[mode, "forwardauth"], res[mode, "bare"]
        mid, ratios = median_round(a, b)
        print(f"\n  {title.replace('--users', f'{args.users:,}')}")
        print(f"  {'':34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/req':>12}  errors")
        for name, r in (("(a) forwardauth /auth/nginx", a[mid]), ("(b) bare aiohttp+uvloop 200", b[mid])):
            print(f"  {name:34}{r.rps:>10.0f}{r.p50_ms:>10.2f}{r.p99_ms:>10.2f}{r.cpu_us:>12.0f}  {r.errors or '-'}")
        ratio = out[mode] = ratios[mid]
        cpu = sorted(y.cpu_us / x.cpu_us for x, y in zip(a, b, strict=True) if x.cpu_us)
        out[mode + "_cpu"] = cpu[len(cpu) // 2] if cpu else 0.0
        print(f"  {'ratio a/b (requests/s)':34}{ratio:>10.2f}   target >= {target:.2f}: "
              f"{'met' if ratio >= target else 'NOT met'}")
        print(f"  {'ratio b/a (backend CPU per req)':34}{out[mode + '_cpu']:>10.2f}   (median of the rounds; what "
              "the ratio would be if the backend alone bounded req/s)")
        print("  (every round, a and b taking turns: req/s " + ", ".join(f"{r:.2f}" for r in ratios)
              + "; CPU " + ", ".join(f"{y.cpu_us / x.cpu_us:.2f}" for x, y in zip(a, b, strict=True) if x.cpu_us) + ")")
        if any(r.errors for r in a + b):
            print("  WARNING: some rounds had errors: their figures are not comparable")
    for name in res["targets"][1:-1]:
        for mode in args.modes:
            mid, ratios = median_round(res[mode, name], res[mode, "forwardauth"])
            x, y = res[mode, name][mid], res[mode, "forwardauth"][mid]
            print(f"\n  {mode}: {name} / forwardauth with {args.workers[0]} worker: req/s {x.rps:.0f} / {y.rps:.0f} = "
                  f"{ratios[mid]:.2f} (every round: {', '.join(f'{r:.2f}' for r in ratios)}); CPU us/req "
                  f"{x.cpu_us:.0f} / {y.cpu_us:.0f}")
            mid, ratios = median_round(res[mode, name], res[mode, "bare"])
            print(f"  {mode}: {name} / bare: {ratios[mid]:.2f} (every round: {', '.join(f'{r:.2f}' for r in ratios)})")
    if res["fa_body"]:
        bare_len = len(args.bare_body.encode().decode("unicode_escape"))
        print(f"  note: forwardauth's 200 answer has a {res['fa_body']}-byte body; nginx does not read the body"
              " of an auth_request answer,\n        so it closes the upstream connection after every check"
              f" (the bare app's body: {bare_len} bytes).")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Targets (issue 13): hot a/b >= 0.95, cold a/b >= 0.70; large/small policy <= 1.2x.")
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
    p.add_argument("--modes", default="hot,cold", help="HTTP modes, of hot and cold (default %(default)s)")
    p.add_argument("--users", type=int, default=2000, help="users whose cookies the cold path takes in turn "
                                                           "(default %(default)s)")
    p.add_argument("--workers", default="1", help="forwardauth serve --workers; a list (1,2) runs one forwardauth "
                                                  "per value, side by side (default %(default)s)")
    p.add_argument("--source", metavar="DIR", help="run forwardauth from this source tree (PYTHONPATH), e.g. an "
                                                   "older commit's (git archive) for a before/after")
    p.add_argument("--before", metavar="DIR", help="also run forwardauth from this source tree (one worker), as "
                                                   "one more target in the same rounds: a before/after in one run")
    p.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                   help="before the rounds, profile the forwardauth worker with py-spy for this long in each mode")
    p.add_argument("--profile-top", type=int, default=30, help="functions shown per profile (default %(default)s)")
    p.add_argument("--cpu", default="none",
                   help="pin every one-worker backend (forwardauth and the bare handler alike) to this CPU with "
                        "taskset, as bench_oauth2_proxy.py does; nginx and wrk stay free (default %(default)s: not "
                        "pinned, the scheduler mixes all four on the cores)")
    p.add_argument("--skip-http", action="store_true", help="only time the policy decision")
    p.add_argument("--skip-policy", action="store_true", help="only run the HTTP benchmark")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.policy_sizes.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or set(args.modes) - set(MODES):
        raise SystemExit(f"--modes: a comma-separated list of {', '.join(MODES)}")
    args.fa_extra = None
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.cpu == "none":
        args.cpu = None
    elif shutil.which("taskset") is None:
        raise SystemExit("--cpu needs taskset (util-linux)")

    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-bench-"))
    print(f"forwardauth benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, work dir {workdir}")
    try:
        if not args.skip_http:
            print(f"\nHTTP through nginx auth_request: wrk -t{args.threads} -c{args.connections} "
                  f"-d{args.duration:g}s x {args.rounds} rounds, {args.rules}-rule policy, host {target_host(args.rules)}, "
                  f"forwardauth with {'/'.join(map(str, args.workers))} worker(s), one-worker backends "
                  f"{'pinned to CPU ' + args.cpu if args.cpu is not None else 'not pinned'}; load {load_text()}",
                  flush=True)
            res = http_bench(args, workdir)
            report_http(args, res)
        if not args.skip_policy:
            rows = policy_bench(sizes, workdir)
            print("\nPolicy decision, in-process, microseconds per call (best of 7 alternating rounds, GC off)")
            print(f"  {'rules':>8}{'match() hot':>14}{'decide() hot':>14}{'decide() mix':>14}")
            for n, m, d, x in rows:
                print(f"  {n:>8}{m:>14.2f}{d:>14.2f}{x:>14.2f}")
            (n0, m0, d0, x0), (n1, m1, d1, x1) = rows[0], rows[-1]
            ratios = (m1 / m0, d1 / d0, x1 / x0)
            print(f"  {f'{n1}/{n0}':>8}" + "".join(f"{r:>13.2f}x" for r in ratios))
            print(f"  target: decide() hot within 1.2x -> {'met' if ratios[1] <= 1.2 else 'NOT met'} "
                  f"({ratios[1]:.2f}x)")
            print("  hot: the same request every time (the matched rule is one host's catch-all in both sizes);")
            print(f"  mix: 1,000 requests over every exact host ({len(full_exact_hosts(n0))} vs "
                  f"{len(full_exact_hosts(n1))}) and 4 paths, so it also measures a bigger working set")
    finally:
        if not args.keep:

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
