"""10 rules vs 10,000: start-up, `check`, memory of one worker, decision time.

For each policy size (bench_decision.py's generated policy: per host a public
prefix, an admin area with a group, an API glob with per-method levels and a
catch-all):

- `forwardauth check -c FILE`: wall time and CPU time (best of --runs), with
  nothing kept and from the kept YAML value (services/configcache.py);
- `forwardauth serve`: from the process start to /readyz answering 200
  (polled every 20 ms), best of --runs, with nothing kept and kept;
- RSS of that one worker once ready, and again after --load seconds of wrk
  asking /auth/nginx about new URLs with 2,000 users' cookies (the memo and
  the opened-cookie cache filled);
- the decision in process (Policy.match and decide(), bench_decision.py's
  policy timing): the same request, and a mix over every host.

Targets (issue 13): RSS <= 80 MB, ready and check <= 1.0 s at 10,000 rules;
decide() 10,000 vs 10 rules within 1.2x.

    .venv/bin/python bench/bench_scale.py                  # about 1 minute
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_decision import BENCH_PATH, load_text, mint_cookies, policy_bench, policy_of, target_host  # noqa: E402

from harness.forwardauth import ForwardAuth  # noqa: E402 (tests/ is on sys.path via bench_decision)
from harness.procs import find_tool, http_status  # noqa: E402

DIRECT_LUA = """
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args)
  cookies = {}
  for line in io.lines("{cookies}") do cookies[#cookies + 1] = line end
  n = 0
end
function request()
  n = n + 1
  wrk.headers["Cookie"] = cookies[n % #cookies + 1]
  wrk.headers["X-Original-URL"] = "http://{host}{path}/" .. tid .. "/" .. n
  wrk.headers["X-Original-Method"] = "GET"
  return wrk.format(nil, "/auth/nginx")
end
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    """Each of check and serve timed `runs` times with nothing kept (the first run after an edit)
    and `runs` times from the kept YAML value (services/configcache.py; only configs of 256 KB or
    more are kept, so for a small one both are the same)."""
    out: dict = {k: [] for k in ("check", "check_cpu", "ready", "check_kept", "check_kept_cpu", "ready_kept")}
    cache = workdir / f"cache-{n}"
    os.environ["FORWARDAUTH_CACHE_DIR"] = str(cache)  # inherited by check and serve
    fa = ForwardAuth(workdir / f"rules-{n}", policy=policy_of(n))
    for kept in (False, True):
        sfx = "_kept" if kept else ""
        for _ in range(args.runs):
            if not kept:
                shutil.rmtree(cache, ignore_errors=True)
            cpu, t = children_cpu(), time.monotonic()
            subprocess.run([sys.executable, "-m", "forwardauth", "check", "-c", str(fa.config)], check=True,
                           capture_output=True)
            out["check" + sfx].append(time.monotonic() - t)
            out["check" + sfx + "_cpu"].append(children_cpu() - cpu)
    for i in range(2 * args.runs):
        kept = i >= args.runs
        if not kept:
            shutil.rmtree(cache, ignore_errors=True)
        t = time.monotonic()
        fa.proc.start()
        try:
            while True:
                try:
                    if http_status(fa.port, "/readyz", timeout=1) == 200:
                        break
                except OSError:
                    pass
                if fa.proc.popen.poll() is not None or time.monotonic() - t > 120:
                    raise SystemExit(f"forwardauth with {n} rules did not get ready\n{fa.proc.log()}")
                time.sleep(0.02)
            out["ready_kept" if kept else "ready"].append(time.monotonic() - t)
            if i == 2 * args.runs - 1:
                pid = fa.proc.popen.pid
                out["rss_ready"] = rss_mb(pid)
                wrk = find_tool("wrk")
                if wrk and args.load > 0:
                    cookies = workdir / "cookies.txt"
                    cookies.write_text("\n".join(mint_cookies(fa.config, 2000)) + "\n")
                    script = workdir / f"direct-{n}.lua"
                    script.write_text(DIRECT_LUA.replace("{cookies}", str(cookies))
                                      .replace("{host}", target_host(n)).replace("{path}", BENCH_PATH))
                    subprocess.run([wrk, "-t2", "-c16", f"-d{max(1, round(args.load))}s", "-s", str(script),
                                    f"http://127.0.0.1:{fa.port}/auth/nginx"], check=True, capture_output=True)
                    out["rss_load"] = rss_mb(pid)
        finally:
            fa.proc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,10000", help="policy sizes, small,large (default %(default)s)")
    p.add_argument("--runs", type=int, default=2, help="runs of check and of serve per size; the best counts "
                                                       "(default %(default)s)")
    p.add_argument("--load", type=float, default=5, help="seconds of wrk before the second RSS reading "
                                                         "(default %(default)s; 0: none)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-scale-bench-"))
    # An installed forwardauth runs from byte-compiled modules (pip compiles them); a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module on every start, which no deployment does.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "forwardauth")], check=True,
                   capture_output=True)
    print(f"policy size: {', '.join(map(str, sizes))} rules; {os.cpu_count()} CPUs, load {load_text()}", flush=True)
    try:
        rows = {n: measure(n, args, workdir) for n in sizes}
        print("  first: nothing kept (the first run after an edit); kept: from the kept YAML value (256 KB or more)")
        print(f"  {'rules':>8}{'check s':>9}{'(CPU s)':>9}{'kept s':>8}{'(CPU s)':>9}{'ready s':>9}{'kept s':>8}"
              f"{'RSS MB':>8}{'after load':>12}")
        for n, r in rows.items():
            print(f"  {n:>8}{min(r['check']):>9.2f}{min(r['check_cpu']):>9.2f}{min(r['check_kept']):>8.2f}"
                  f"{min(r['check_kept_cpu']):>9.2f}{min(r['ready']):>9.2f}{min(r['ready_kept']):>8.2f}"
                  f"{r['rss_ready']:>8.0f}{r.get('rss_load', float('nan')):>12.0f}")
        big = rows[sizes[-1]]
        met = {k: "met" if min(big[k]) <= 1.0 else "NOT met" for k in ("check", "check_kept", "ready", "ready_kept")}
        print(f"  targets at {sizes[-1]} rules: RSS <= 80 MB {'met' if big['rss_ready'] <= 80 else 'NOT met'} "
              f"(ready, kept), check <= 1.0 s {met['check']} first, {met['check_kept']} kept; ready <= 1.0 s "
              f"{met['ready']} first, {met['ready_kept']} kept (wall time on this machine; the CPU columns are what "
              "check itself spent)")
        res = policy_bench([sizes[0], sizes[-1]], workdir)
        print("\n  decision in process, us per call (best of 7 alternating rounds, GC off)")
        print(f"  {'rules':>8}{'match() hot':>14}{'decide() hot':>14}{'decide() mix':>14}")
        for n, m, d, x in res:
            print(f"  {n:>8}{m:>14.2f}{d:>14.2f}{x:>14.2f}")
        (_, m0, d0, x0), (_, m1, d1, x1) = res[0], res[-1]
        print(f"  {'ratio':>8}{m1 / m0:>13.2f}x{d1 / d0:>13.2f}x{x1 / x0:>13.2f}x   target decide() hot <= 1.2x: "
              f"{'met' if d1 / d0 <= 1.2 else 'NOT met'}")
        print("  (the mix is over the hosts whose rules are all in the policy: 1 host at 10 rules, 1,000 hosts at "
              "10,000, so its ratio is mostly what 1,000 hosts' rules cost in the CPU caches, not the policy's "
              "size; the hot columns are the same request against both policies)")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
