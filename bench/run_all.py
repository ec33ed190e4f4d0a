"""Every figure of bench/ in one run (bench/README.md says what each measures).

In turn, each in its own process (a failure of one is reported, the others
still run):

1. bench_decision.py: hot and cold paths vs the bare aiohttp handler behind
   the same nginx, `serve --workers 1` and `--workers 2` side by side;
2. bench_memo.py: the memo's hit rate and throughput, working sets of 1k,
   10k and 100k keys;
3. bench_scale.py: 10 vs 10,000 rules: check, serve ready, RSS, decision time;
4. bench_reload.py: SIGHUP bursts under load with 10,000 rules;
5. bench_oauth2_proxy.py: forwardauth vs oauth2-proxy, hot and cold (builds
   oauth2-proxy with Go the first time; --skip-oauth2-proxy without Go).

    .venv/bin/python bench/run_all.py          # about 15 minutes
    .venv/bin/python bench/run_all.py --quick  # fewer, shorter rounds: about 7 minutes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 s, fewer users signed in to oauth2-proxy")
    p.add_argument("--skip-oauth2-proxy", action="store_true", help="leave out the oauth2-proxy comparison")
    p.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                   help="also profile forwardauth's worker with py-spy (bench_decision.py --profile)")
    p.add_argument("--before", metavar="DIR", help="also run another source tree's forwardauth in bench_decision.py's "
                                                   "rounds (e.g. `git archive main | tar -x -C DIR`): before/after")
    args = p.parse_args(argv)
    rounds = ["--rounds", "3", "--duration", "3"] if args.quick else []
    runs = [
        ("bench_decision.py", [*rounds, "--workers", "1,2", "--skip-policy",
                               *(["--profile", str(args.profile)] if args.profile else []),
                               *(["--before", args.before] if args.before else [])]),
        ("bench_memo.py", ["--requests", "100000"] if args.quick else []),
        ("bench_scale.py", ["--runs", "1"] if args.quick else []),
        ("bench_reload.py", ["--rounds", "2", "--duration", "6"] if args.quick else []),
    ]
    if not args.skip_oauth2_proxy:
        runs.append(("bench_oauth2_proxy.py", [*rounds, "--o2p-users", "300"] if args.quick else []))
    load = os.getloadavg()
    print(f"bench/run_all.py: {os.cpu_count()} CPUs, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start",
          flush=True)
    failed = []
    for script, extra in runs:
        print(f"\n===== {script} {' '.join(extra)}", flush=True)
        t = time.monotonic()
        code = subprocess.call([sys.executable, str(BENCH / script), *extra])
        print(f"===== {script}: {'ok' if code == 0 else f'exit status {code}'} ({time.monotonic() - t:.0f} s)",
              flush=True)
        if code:
            failed.append(script)
    load = os.getloadavg()
    print(f"\nload at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}" + (f"; FAILED: {', '.join(failed)}"
                                                                         if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
