"""forwardauth side by side with oauth2-proxy, behind the same nginx auth_request.

Two nginx instances with the same config (bench_decision.py's: the shipped
nginx/ snippets, auth_request in front of a static 200 file) differ only in
the auth backend: (a) forwardauth /auth/nginx, one worker, bench_decision.py's
generated policy; (b) oauth2-proxy v7.15.6 /oauth2/auth (built with `go
install` into bench/.cache, once), OIDC against the test provider
(tests/oidc_provider), cookie sessions, --set-xauthrequest. Both processes are
pinned to the same CPU (taskset) and oauth2-proxy runs with GOMAXPROCS=1: one
process, one core each.

Session cookies are real: forwardauth's are sealed by its own code (what
`forwardauth session issue` does, in one process for speed); oauth2-proxy's
come from signing each user in through its own flow, the provider's
interaction finished by a queued test login.

wrk drives both with the same settings, in alternating rounds:
  hot:  one URL, one cookie;
  cold: every request a new path (/dashboard/<thread>/<n>) and the cookies of
        many users in turn (a wrk Lua script), so forwardauth's memo never helps.

    .venv/bin/python bench/bench_oauth2_proxy.py             # ~3 min (1 min of it signing 2,000 users in)
    .venv/bin/python bench/bench_oauth2_proxy.py --users 500 --rounds 5
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_decision import (  # noqa: E402
    BENCH_PATH,
    WrkResult,
    cold_script,
    nginx_conf,
    parse_wrk,
    policy_of,
    target_host,
)
from oauth2_proxy_peer import OAuth2Proxy, ensure_built, sign_in_many, start_provider  # noqa: E402

from harness.forwardauth import COOKIE, ForwardAuth  # noqa: E402 (tests/ is on sys.path via oauth2_proxy_peer)
from harness.procs import Proc, find_tool, free_port, http_status  # noqa: E402

TARGETS = ("forwardauth", "oauth2-proxy")
AUTH_PATHS = {"forwardauth": "/auth/nginx", "oauth2-proxy": "/oauth2/auth"}


# --- the two backends ---------------------------------------------------------


def mint_forwardauth_cookies(config: Path, users: int) -> list[str]:
    """`users` sealed forwardauth sessions, one per user: what `forwardauth session issue`
    does (codec.new, seal, and a check that the server will open it), in one process
    instead of 2,000."""
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


def forwardauth_on(workdir: Path, rules: int, cpu: str | None) -> ForwardAuth:
    """forwardauth (not started yet) with the benchmark's policy, pinned to `cpu`."""
    fa = ForwardAuth(workdir / "forwardauth", policy=policy_of(rules))
    if cpu is not None:
        fa.proc.argv = ["taskset", "-c", cpu, *fa.proc.argv]
    return fa


def start_nginx(binary: str, workdir: Path, auth_port: int, auth_path: str, host: str) -> tuple[Proc, int]:
    """nginx with bench_decision.py's config; for another auth path than forwardauth's, the
    shipped forwardauth.conf is copied with that one proxy_pass line changed."""
    for d in ("tmp", "www"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    (workdir / "www" / "ok.txt").write_text("ok\n")
    port = free_port()
    conf = nginx_conf(workdir, port, auth_port)
    if auth_path != "/auth/nginx":
        shipped = REPO / "nginx" / "forwardauth.conf"
        old = "proxy_pass http://forwardauth/auth/nginx;"
        text = shipped.read_text()
        if text.count(old) != 1 or conf.count(str(shipped)) != 1:
            raise SystemExit(f"cannot point {shipped} at {auth_path}: the snippet or bench_decision.nginx_conf changed")
        copy = workdir / "forwardauth.conf"
        copy.write_text(text.replace(old, f"proxy_pass http://forwardauth{auth_path};"))
        conf = conf.replace(str(shipped), str(copy))
    (workdir / "nginx.conf").write_text(conf)
    proc = Proc(f"nginx({workdir.name})", [binary, "-p", workdir, "-c", workdir / "nginx.conf", "-e",
                                           workdir / "error.log", "-g", "daemon off;"], workdir / "error.log").start()
    try:
        proc.wait_until(lambda: http_status(port, "/healthz", host) in (200, 401, 403), what="answering")
    except BaseException:
        proc.stop()
        raise
    return proc, port


# --- checks -------------------------------------------------------------------


def status_via_nginx(port: int, host: str, path: str, cookie: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host, "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("GET", path, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def auth_answer(port: int, path: str, host: str, cookie: str) -> tuple[int, list[str], int]:
    """Status, header names and body size of a backend's answer to nginx's subrequest (asked directly)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host, "Cookie": cookie, "Accept": "application/json",
                                       "X-Original-URL": f"http://{host}{BENCH_PATH}", "X-Original-Method": "GET",
                                       "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, sorted({k for k, _ in resp.getheaders()} - {"Date", "Server", "Content-Length"}), len(body)


def sanity(ports: dict[str, int], host: str, cookies: dict[str, list[str]]) -> None:
    """The comparison only means something if both really check the cookie: 200 with
    each user's cookie on a new path (a sample), 401 without, 401 with a forged one."""
    for name, port in ports.items():
        sample = cookies[name][:: max(1, len(cookies[name]) // 20)] + cookies[name][-1:]
        checks = [(f"{name} user {i}", f"{BENCH_PATH}/check/{i}", c, 200) for i, c in enumerate(sample)]
        forged = cookies[name][0][:-8] + ("A" * 8 if not cookies[name][0].endswith("A" * 8) else "B" * 8)
        checks += [(f"{name} without cookie", BENCH_PATH, None, 401), (f"{name} forged cookie", BENCH_PATH, forged, 401)]
        for what, path, cookie, want in checks:
            if (got := status_via_nginx(port, host, path, cookie)) != want:
                raise SystemExit(f"sanity check {what}: status {got}, expected {want}")


# --- wrk ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (nginx's workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (each wrk run, once it has exited)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Round:
    """One wrk run, and the CPU time the backend, nginx's worker and wrk spent meanwhile:
    the backend's CPU per request is what a decision costs, much less disturbed by the
    machine's other load than req/s; the three together say what bounds req/s."""

    wrk: WrkResult
    cpu: float
    wall: float
    nginx_cpu: float
    wrk_cpu: float

    def per_request(self, cpu: float) -> float:
        return cpu / max(1, self.wrk.requests) * 1e6

    @property
    def us_per_request(self) -> float:
        return self.per_request(self.cpu)

    @property
    def busy(self) -> float:
        """Share of one core the backend used: near 1.0, the backend is what bounds req/s."""
        return self.cpu / self.wall


def wrk(binary: str, port: int, host: str, args: argparse.Namespace, seconds: float, *, cookie: str | None = None,
        script: Path | None = None) -> WrkResult:
    cmd = [binary, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-H", f"Host: {host}", "-H", "Accept: application/json",
           *(["-H", f"Cookie: {cookie}"] if cookie else []), *(["-s", str(script)] if script else []),
           f"http://127.0.0.1:{port}{BENCH_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    nginx, wrk_bin = find_tool("nginx", "/usr/sbin/nginx"), find_tool("wrk")
    if not nginx or not wrk_bin:
        raise SystemExit("needs nginx and wrk (Debian: apt-get install nginx wrk)")
    ensure_built()
    host = target_host(args.rules)
    procs: list = []
    try:
        t = time.monotonic()
        fa = forwardauth_on(workdir, args.rules, args.cpu)
        procs.append(fa.proc)  # before start(): stopped even if it never gets ready
        fa.start()
        fa_hot = f"{COOKIE}={fa.issue('bench', 'password', email='bench@example.test', groups=('dev',), name='Bench')}"
        fa_cookies = mint_forwardauth_cookies(fa.config, args.users)
        print(f"  forwardauth: started, {len(fa_cookies)} sessions sealed ({time.monotonic() - t:.1f} s)", flush=True)

        t = time.monotonic()
        o2p_port = free_port()
        op = start_provider(workdir, f"http://127.0.0.1:{o2p_port}/oauth2/callback")
        procs.append(op)
        o2p = OAuth2Proxy(workdir, op, o2p_port, cpu=args.cpu)
        procs.append(o2p.proc)
        o2p.start()
        o2p_cookies = sign_in_many(o2p, op, args.o2p_users)
        print(f"  oauth2-proxy: started, {len(o2p_cookies)} users signed in through it "
              f"({time.monotonic() - t:.1f} s)", flush=True)
        op.stop()  # not needed any more: a cookie session is checked without the provider

        ports, nginx_procs, backends = {}, {}, {"forwardauth": fa.port, "oauth2-proxy": o2p.port}
        for name in TARGETS:
            nginx_procs[name], ports[name] = start_nginx(nginx, workdir / f"nginx-{name}", backends[name],
                                                         AUTH_PATHS[name], host)
            procs.append(nginx_procs[name])
        cookies = {"forwardauth": fa_cookies, "oauth2-proxy": o2p_cookies}
        hot = {"forwardauth": fa_hot, "oauth2-proxy": o2p_cookies[0]}
        sanity(ports, host, {n: [hot[n], *cookies[n]] for n in TARGETS})
        res: dict = {"answers": {n: auth_answer(backends[n], AUTH_PATHS[n], host, hot[n]) for n in TARGETS},
                     "cookie_bytes": {n: len(hot[n].partition("=")[2]) for n in TARGETS}, "host": host}

        scripts = {name: cold_script(workdir, name, cookies[name], args.threads) for name in TARGETS}

        pids = {"forwardauth": fa.proc.popen.pid, "oauth2-proxy": o2p.proc.popen.pid}

        workers = {name: child_pids(proc.popen.pid) for name, proc in nginx_procs.items()}

        def once(mode: str, name: str, seconds: float) -> Round:
            def clocks() -> tuple[float, ...]:
                return (cpu_seconds(pids[name]), time.monotonic(), sum(map(cpu_seconds, workers[name])),
                        children_cpu_seconds())

            before = clocks()
            if mode == "hot":
                w = wrk(wrk_bin, ports[name], host, args, seconds, cookie=hot[name])
            else:
                w = wrk(wrk_bin, ports[name], host, args, seconds, script=scripts[name])
            return Round(w, *(x - y for x, y in zip(clocks(), before, strict=True)))

        if args.warmup > 0:
            for mode in ("hot", "cold"):
                for name in TARGETS:
                    once(mode, name, args.warmup)
        for mode in ("hot", "cold"):
            for name in TARGETS:
                res[mode, name] = []
        # Rounds: each mode, each target in turn, who goes first alternating, so the
        # machine's other load falls on both alike and each round's ratio is fair.
        for i in range(args.rounds):
            for mode in ("hot", "cold"):
                for name in TARGETS if i % 2 == 0 else reversed(TARGETS):
                    res[mode, name].append(once(mode, name, args.duration))
        return res
    finally:
        for p in reversed(procs):
            p.stop()


# --- report -------------------------------------------------------------------


def report(args: argparse.Namespace, res: dict) -> None:
    print("\nWhat each backend answers nginx's subrequest (asked directly with a valid cookie):")
    for name in TARGETS:
        status, headers, body = res["answers"][name]
        print(f"  {name:13} {AUTH_PATHS[name]:13} {status}, {body}-byte body, cookie {res['cookie_bytes'][name]} "
              f"bytes, headers: {', '.join(headers)}")
    for mode, title in (("hot", f"hot path: one URL ({BENCH_PATH}), one cookie"),
                        ("cold", f"cold path: every request a new path ({BENCH_PATH}/<thread>/<n>), cookies of "
                                 f"{args.users:,} (forwardauth) / {args.o2p_users:,} (oauth2-proxy) users in turn")):
        a, b = res[mode, "forwardauth"], res[mode, "oauth2-proxy"]
        ratios = [x.wrk.rps / y.wrk.rps for x, y in zip(a, b, strict=True)]
        mid = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
        costs = [y.us_per_request / x.us_per_request for x, y in zip(a, b, strict=True)]
        cost = sorted(costs)[len(costs) // 2]
        print(f"\n{title}")
        print(f"  {'':32}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>12}{'busy':>6}"
              f"{'nginx us':>10}{'wrk us':>8}  errors")
        for name, r in (("(a) forwardauth /auth/nginx", a[mid]), ("(b) oauth2-proxy /oauth2/auth", b[mid])):
            w = r.wrk
            print(f"  {name:32}{w.rps:>8.0f}{w.p50_ms:>8.2f}{w.p99_ms:>8.2f}{r.us_per_request:>12.0f}"
                  f"{r.busy:>6.0%}{r.per_request(r.nginx_cpu):>10.0f}{r.per_request(r.wrk_cpu):>8.0f}  {w.errors or '-'}")
        ratio = ratios[mid]
        print(f"  {'ratio a/b, requests/s':32}{ratio:>8.2f}   target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'}")
        print(f"  {'ratio b/a, backend CPU per req':32}{cost:>8.2f}   (median of the rounds' ratios; > 1: forwardauth "
              "spends less CPU per decision)")
        print("  every round, a and b taking turns: req/s a/b " + ", ".join(f"{r:.2f}" for r in ratios)
              + "; CPU b/a " + ", ".join(f"{r:.2f}" for r in costs)
              + "; p99 ms a/b " + ", ".join(f"{x.wrk.p99_ms:.0f}/{y.wrk.p99_ms:.0f}" for x, y in zip(a, b, strict=True)))
        if any(r.wrk.errors for r in a + b):
            print("  WARNING: some rounds had errors (above): their figures are not comparable")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Target (issue 13): forwardauth/oauth2-proxy >= 1.0 on both paths.")
    p.add_argument("--duration", type=float, default=5, help="seconds of wrk per target, mode and round "
                                                             "(default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the median ratio is shown (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk per target and mode before measuring "
                                                           "(default %(default)s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    p.add_argument("--rules", type=int, default=1000, help="rules in forwardauth's policy (default %(default)s)")
    p.add_argument("--users", type=int, default=2000, help="users whose cookies the cold path takes in turn "
                                                           "(default %(default)s)")
    p.add_argument("--o2p-users", type=int, help="users signed in through oauth2-proxy for its cold path "
                                                 "(default: --users; about 30 ms each)")
    p.add_argument("--cpu", default=str((os.cpu_count() or 1) - 1),
                   help="CPU both backends are pinned to with taskset, or 'none' (default %(default)s; nginx and "
                        "wrk are not pinned)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, cookies)")
    args = p.parse_args(argv)
    args.o2p_users = args.o2p_users or args.users
    if args.users < 1 or args.o2p_users < 1:
        raise SystemExit("--users and --o2p-users must be at least 1")
    if args.cpu == "none":
        args.cpu = None
    elif shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is missing: install it or pass --cpu none")

    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-o2p-bench-"))
    load = os.getloadavg()
    print(f"forwardauth vs oauth2-proxy: {os.cpu_count()} CPUs (load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}), "
          f"Python {sys.version.split()[0]}, work dir {workdir}")
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s x {args.rounds} rounds per mode, "
          f"{args.rules}-rule forwardauth policy, backends pinned to CPU {args.cpu or '(none)'}, "
          "oauth2-proxy GOMAXPROCS=1, forwardauth 1 worker", flush=True)
    try:
        res = run(args, workdir)
        report(args, res)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
