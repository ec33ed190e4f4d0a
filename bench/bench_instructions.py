"""Instructions per decision request, counted by valgrind's callgrind: a load-independent figure.

The machine these benchmarks run on is shared and noisy, and requests per
second move with it; the number of instructions a process executes per
request does not. This runs forwardauth (`serve`, one worker, the 1,000-rule
policy of bench_decision.py) and the bare aiohttp handler (bare_app.py)
under callgrind in turn, warms each with 3,000 requests, then counts the
user-space instructions of exactly --requests more, asked directly over one
kept-alive connection (no nginx: the backend alone), hot (one URL, one
cookie) and cold (a new path each time, 2,000 users' cookies in turn). The
ratio bare/forwardauth is what the requests-per-second ratio would be if
the backend's instructions alone bounded it. `--top N` lists the functions
(C level: CPython, aiohttp's extensions, libc) where forwardauth executes
the most instructions more than the bare handler.

    .venv/bin/python bench/bench_instructions.py            # about 10 minutes (valgrind is ~50x slower)
    .venv/bin/python bench/bench_instructions.py --modes hot --top 20

Needs valgrind (Debian: apt-get install valgrind); not part of run_all.py.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_decision import BENCH_PATH, load_text, mint_cookies, policy_of, target_host  # noqa: E402

from harness.forwardauth import ForwardAuth  # noqa: E402
from harness.procs import free_port  # noqa: E402


def count(who: str, mode: str, n: int, workdir: Path) -> tuple[float, Path]:
    """Instructions per request of `who` ("forwardauth" or "bare") in `mode`, and its callgrind file."""
    d = workdir / f"{who}-{mode}"
    fa = ForwardAuth(d / "fa", policy=policy_of(1000))
    cookies = mint_cookies(fa.config, 2000)
    host = target_host(1000)
    out = d / "callgrind.out"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no"]
    if who == "forwardauth":
        cmd, port, env = [*vg, *fa.proc.argv], fa.port, fa.proc.env
    else:
        port, env = free_port(), None
        cmd = [*vg, sys.executable, str(REPO / "bench" / "bare_app.py"), "--listen", f"127.0.0.1:{port}"]
    log = open(d / "valgrind.log", "w")
    p = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def ask(c: http.client.HTTPConnection, i: int) -> int:
        url = f"http://{host}{BENCH_PATH}" + ("" if mode == "hot" else f"/x/{i}")
        cookie = cookies[0] if mode == "hot" else cookies[i % len(cookies)]
        c.request("GET", "/auth/nginx", headers={"X-Original-URL": url, "X-Original-Method": "GET",
                                                "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                                                "Cookie": cookie})
        r = c.getresponse()
        r.read()
        return r.status

    try:
        started = time.monotonic()
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ask(conn, -1)
                break
            except OSError:
                if p.poll() is not None or time.monotonic() - started > 600:
                    raise SystemExit(f"{who} did not start under valgrind (see {d / 'valgrind.log'})") from None
                time.sleep(0.5)
        for i in range(3000):  # warm: the memo and the opened cookies filled as a running server's are
            ask(conn, 1_000_000 + i)
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        statuses = {ask(conn, i) for i in range(n)}
        subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        if statuses != {200}:
            raise SystemExit(f"{who} {mode}: answered {statuses}, expected only 200")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    dumps = sorted(d.glob("callgrind.out.*"), key=lambda f: f.stat().st_mtime)
    if not dumps:
        raise SystemExit(f"{who} {mode}: no callgrind dump")
    total = max(int(line.split()[1]) for line in dumps[0].read_text().splitlines()
                if line.startswith(("summary:", "totals:")))  # a dump on request has its count in totals
    return total / n, dumps[0]


def per_function(dump: Path, n: int) -> dict[str, float]:
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(dump)], capture_output=True,
                          text=True, check=True).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[.*)?$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2).split(":", 1)[-1]
            out[name] = out.get(name, 0.0) + int(m.group(1).replace(",", "")) / n
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests counted per run (default %(default)s)")
    p.add_argument("--modes", default="hot,cold", help="of hot and cold (default %(default)s)")
    p.add_argument("--top", type=int, default=12, help="functions shown per mode (default %(default)s; 0: none)")
    args = p.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-instructions-"))
    print(f"instructions per request (callgrind, user space), {args.requests} requests per run after 3,000 to "
          f"warm, asked directly (no nginx); load {load_text()} (does not matter here)", flush=True)
    try:
        for mode in [m for m in args.modes.split(",") if m]:
            fa, fa_dump = count("forwardauth", mode, args.requests, workdir)
            bare, bare_dump = count("bare", mode, args.requests, workdir)
            print(f"  {mode}: forwardauth {fa:,.0f}, bare aiohttp {bare:,.0f}: ratio bare/forwardauth "
                  f"{bare / fa:.2f}", flush=True)
            if args.top:
                a, b = per_function(fa_dump, args.requests), per_function(bare_dump, args.requests)
                diff = sorted(((a.get(k, 0) - b.get(k, 0), k) for k in set(a) | set(b)), reverse=True)
                print("    where forwardauth executes more (instructions per request, C functions):")
                for v, k in diff[:args.top]:
                    print(f"    {v:>9,.0f}  {k[:100]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
