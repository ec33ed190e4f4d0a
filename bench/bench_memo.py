"""The decision memo when the working set is larger than it: hit rate and throughput.

In process, no HTTP: forwardauth's decision pipeline (core.authorize.Authorizer,
as /auth/nginx runs it, plus the aiohttp Response object the handler makes)
answers a stream of requests drawn from a working set of K distinct keys (a
key: one URL and one user's cookie; 2,000 users), K = 1k, 10k, 100k, with the
memo's default size (server.memo_entries). Two draws: *uniform* (every key
alike) and *skewed* (80% of requests on 20% of the keys, as pages and their
assets are). The hit rate is the share of requests answered without a call of
`decide` (counted by wrapping it); the throughput is requests per CPU second.

    .venv/bin/python bench/bench_memo.py                     # about 1 minute
    .venv/bin/python bench/bench_memo.py --sets 1000,10000,100000 --requests 200000
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/bench_memo.py   # another version, same figures
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_decision import BENCH_PATH, load_text, make_config, mint_cookies, policy_of, target_host  # noqa: E402

from harness.procs import free_port  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="1000,10000,100000", help="working set sizes (default %(default)s)")
    p.add_argument("--requests", type=int, default=200_000, help="requests per measurement (default %(default)s)")
    p.add_argument("--users", type=int, default=2000, help="users whose cookies the keys use (default %(default)s)")
    p.add_argument("--rules", type=int, default=1000, help="rules in the policy (default %(default)s)")
    args = p.parse_args(argv)

    from aiohttp import web
    from multidict import CIMultiDict, CIMultiDictProxy

    import forwardauth
    from forwardauth.composition import load_config
    from forwardauth.core import authorize
    from forwardauth.core.authorize import HEALTHY, Authorizer
    from forwardauth.core.request import NGINX
    from forwardauth.core.runtime import Runtime
    from forwardauth.state.records import RevocationSnapshot
    from forwardauth.state.revocations import Revocations

    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-memo-bench-"))
    config = make_config(workdir, free_port(), policy=policy_of(args.rules))
    runtime = Runtime.build(load_config(config))
    size = getattr(runtime.config.server, "memo_entries", None)
    revocations = Revocations()
    revocations.snapshot = RevocationSnapshot(0)
    cookies = mint_cookies(config, args.users)
    host = target_host(args.rules)
    calls = [0]
    real = authorize.decide

    def counting(*a: object, **kw: object) -> object:
        calls[0] += 1
        return real(*a, **kw)  # type: ignore[arg-type]

    authorize.decide = counting  # type: ignore[assignment]
    print(f"decision memo: forwardauth from {Path(forwardauth.__file__).parent}, memo size "
          f"{size if size is not None else '8192 (fixed)'}, {args.requests:,} requests per row, "
          f"{args.users:,} users; load {load_text()}")
    print(f"  {'keys':>8}  {'draw':8}{'hit rate':>10}{'req/CPU s':>12}{'us/req':>8}")
    for k in (int(x) for x in args.sets.split(",")):
        headers = [CIMultiDictProxy(CIMultiDict([
            ("Host", "forwardauth"), ("X-Original-URL", f"http://{host}{BENCH_PATH}/{i}"), ("X-Original-Method", "GET"),
            ("X-Forwarded-For", "127.0.0.1"), ("X-Real-IP", "127.0.0.1"), ("Accept", "application/json"),
            ("Cookie", cookies[i % len(cookies)])])) for i in range(k)]
        rnd = random.Random(k)
        hot = max(1, k // 5)
        draws = {"uniform": [rnd.randrange(k) for _ in range(args.requests)],
                 "skewed": [rnd.randrange(hot) if rnd.random() < 0.8 else rnd.randrange(k)
                            for _ in range(args.requests)]}
        for draw, order in draws.items():
            a = Authorizer(runtime, NGINX, redirects=False, revocations=revocations)
            stream = [headers[i] for i in order]
            now = time.time()
            for h in stream[: len(stream) // 2]:  # warm: the memo filled as it would be
                a.authorize("127.0.0.1", h, now, HEALTHY)
            rest = stream[len(stream) // 2:]
            calls[0] = 0
            gc.collect()
            t = time.process_time()
            for h in rest:
                r = a.authorize("127.0.0.1", h, now, HEALTHY)
                web.Response(status=r.answer.status, headers=CIMultiDict(r.answer.headers))
            cpu = time.process_time() - t
            hit = 1 - calls[0] / len(rest)
            print(f"  {k:>8,}  {draw:8}{hit:>10.1%}{len(rest) / cpu:>12,.0f}{cpu / len(rest) * 1e6:>8.1f}", flush=True)
    print("  (hit rate: requests answered without deciding; the LRU keeps the most recently used keys, so a "
          "working set larger than the memo loses only its coldest keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
