"""The long fuzz run: every target of tests/harness/fuzz.py, 1,000,000 inputs in total by default.

    .venv/bin/python bench/fuzz.py                     # 1,000,000 inputs, split over the targets
    .venv/bin/python bench/fuzz.py --inputs 50000 --only jwt_verify,macaroon --seed 7

Hypothesis generates the inputs (random text, and real values mutated: a
sealed cookie, a token, a JWT, a config file; see the harness): all of them
with --engine hypothesis (a few milliseconds each, hours for a million), or,
by default, a corpus of 200-2000 per target that harness.fuzz.Mutator then
edits with a seeded random.Random (the same kinds of edits, tens of
thousands a second; the "corpus" column). A target
may raise only the exception types its documentation allows; anything else
is printed with the input that raised it (type, message, input; each
distinct crash once, with how often it happened). The short run of the same
targets is tests/unit/test_fuzz.py, in the normal suite.

Hypothesis does not report code paths, so this counts them itself on a
sample of the inputs (every --trace-every'th, default 25): the set of lines
of forwardauth/ executed for one input is its path; "unique paths" is the
number of distinct sets among the sampled inputs. Tracing is slow, hence the
sampling; the counts are a lower bound.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from harness import fuzz  # noqa: E402

PKG = str(REPO / "forwardauth")


class PathTracer:
    """The lines of forwardauth/ that one call executes (sys.settrace, only in our own frames)."""

    def __init__(self) -> None:
        self.lines: set[tuple[str, int]] = set()

    def _global(self, frame, event, arg):  # noqa: ANN001, ANN202 - the sys.settrace protocol
        if frame.f_code.co_filename.startswith(PKG):
            return self._local
        return None

    def _local(self, frame, event, arg):  # noqa: ANN001, ANN202
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def run(self, target: fuzz.Target, value: object) -> tuple[BaseException | None, frozenset]:
        self.lines = set()
        sys.settrace(self._global)
        try:
            crash = fuzz.run_one(target, value)
        finally:
            sys.settrace(None)
        return crash, frozenset(self.lines)


def fuzz_target(target: fuzz.Target, inputs: int, seed: int, trace_every: int, engine: str) -> dict:
    seen = {"inputs": 0, "paths": set(), "lines": set(), "crashes": Counter(), "examples": {}, "corpus": 0}
    tracer = PathTracer()
    corpus: list[object] = []

    def one(value: object) -> None:
        n = seen["inputs"] = seen["inputs"] + 1
        if trace_every and n % trace_every == 0:
            crash, path = tracer.run(target, value)
            seen["paths"].add(hash(path))
            seen["lines"] |= path
        else:
            crash = fuzz.run_one(target, value)
        if crash is not None:
            tb = traceback.extract_tb(crash.__traceback__)
            where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
            key = (type(crash).__name__, where)
            seen["crashes"][key] += 1
            if key not in seen["examples"]:
                seen["examples"][key] = (fuzz.describe(value), "".join(
                    traceback.format_exception(type(crash), crash, crash.__traceback__)[-3:]))

    # Hypothesis draws every input (engine "hypothesis"), or the corpus the mutator starts from.
    drawn = inputs if engine == "hypothesis" else max(200, min(2000, inputs // 20))

    @settings(max_examples=drawn, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def run(value: object) -> None:
        corpus.append(value)
        one(value)

    from hypothesis import seed as seed_decorator

    seed_decorator(seed)(run)()
    seen["corpus"] = len(corpus)
    if engine == "mutate" and corpus:
        m = fuzz.Mutator(seed)
        recent: list[object] = []
        while seen["inputs"] < inputs:
            base = m.rng.choice(recent) if recent and m.rng.random() < 0.3 else m.rng.choice(corpus)
            value = m.value(base)
            one(value)
            if len(recent) < 256:
                recent.append(value)
            else:
                recent[m.rng.randrange(256)] = value
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs in total, split evenly over the targets")
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--trace-every", type=int, default=25, help="count code paths on every Nth input (0: never)")
    ap.add_argument("--engine", choices=("mutate", "hypothesis"), default="mutate",
                    help="mutate (default): a Hypothesis corpus, then seeded random edits (fast); hypothesis: "
                         "every input drawn by Hypothesis (a few ms each)")
    args = ap.parse_args()
    targets = fuzz.targets()
    if args.only:
        wanted = set(args.only.split(","))
        targets = [t for t in targets if t.name in wanted]
        if not targets:
            print(f"no such target; targets: {', '.join(t.name for t in fuzz.targets())}", file=sys.stderr)
            return 2
    per = max(1, args.inputs // len(targets))
    total_inputs, total_crashes = 0, 0
    print(f"engine {args.engine}, seed {args.seed}, {per} inputs per target, code paths on every "
          f"{args.trace_every}th input")
    print(f"{'target':<20} {'inputs':>9} {'corpus':>6} {'s':>7} {'inputs/s':>9} {'traced':>7} {'paths':>6} "
          f"{'lines':>6} {'crashes':>7}")
    reports = []
    for t in targets:
        start = fuzz.clock()
        seen = fuzz_target(t, per, args.seed, args.trace_every, args.engine)
        took = fuzz.clock() - start
        traced = seen["inputs"] // args.trace_every if args.trace_every else 0
        n_crash = sum(seen["crashes"].values())
        total_inputs += seen["inputs"]
        total_crashes += n_crash
        print(f"{t.name:<20} {seen['inputs']:>9} {seen['corpus']:>6} {took:>7.1f} {seen['inputs'] / took:>9.0f} "
              f"{traced:>7} "
              f"{len(seen['paths']):>6} {len(seen['lines']):>6} {n_crash:>7}", flush=True)
        reports.append((t, seen))
    print(f"{'total':<20} {total_inputs:>9} {'':>6} {'':>7} {'':>9} {'':>7} {'':>6} {'':>6} {total_crashes:>7}")
    for t, seen in reports:
        for (kind, where), count in seen["crashes"].most_common():
            value, tb = seen["examples"][(kind, where)]
            print(f"\nCRASH in {t.name} ({count}x): {kind} at {where}\n  input: {value}\n{tb}")
    if not total_crashes:
        print("\nno exception other than the documented ones")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
