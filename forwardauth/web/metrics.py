"""Prometheus metrics. Counters are per process (each worker has its own).

Process-wide collectors are in prometheus_client's REGISTRY. What belongs to
one app (a part's waiting long-polls, say) goes into that app's own registry
(`app_registry(app)`, filled by the part's build): two apps in one process
(the tests, a reload's overlap) then never show or share each other's.
/metrics answers both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import Enum

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from forwardauth.core.credentials import OPENED
from forwardauth.core.logs import THROTTLES


class DecisionCounter:
    """forwardauth_decisions_total, counted in plain dicts.

    prometheus_client's Counter takes a lock on every increment, which is a
    visible share of a decision served from memory. The event loop is one
    thread, so a dict needs no lock; the registry reads it when scraped. Each
    endpoint counts in its own table, keyed by the outcome (an Enum whose
    value is the label): `table[outcome] += 1`, no call at all.
    """

    name = "forwardauth_decisions"
    doc = "Decisions answered, by endpoint and outcome."

    def __init__(self) -> None:
        self._tables: dict[str, dict[Enum, int]] = {}

    def table(self, endpoint: str, outcomes: Iterable[Enum]) -> dict[Enum, int]:
        """The counts of `endpoint` (one table per endpoint and process), every outcome listed from the start."""
        t = self._tables.setdefault(endpoint, {})
        for o in outcomes:
            t.setdefault(o, 0)
        return t

    def count(self, endpoint: str, outcome: str) -> int:
        return sum(n for o, n in self._tables.get(endpoint, {}).items() if o.value == outcome)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=["endpoint", "outcome"])
        rows = sorted((endpoint, str(o.value), n) for endpoint, t in self._tables.items() for o, n in t.items())
        for endpoint, outcome, n in rows:
            family.add_metric([endpoint, outcome], n)
        yield family


# Upper bounds of forwardauth_decision_duration_seconds' buckets (+Inf after them).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class DecisionStats:
    """The decision endpoints' other metrics, counted in plain lists like DecisionCounter:

    - forwardauth_decision_duration_seconds{endpoint}: a histogram of the time
      from the handler's start to its response object (the decision, not the
      network), fixed BUCKETS: `counts[bisect_left(BUCKETS, seconds)] += 1`
      and `sums[0] += seconds`, no lock (one event loop);
    - forwardauth_memo_hits_total / _misses_total{endpoint}: answers found /
      not found in the decision memo (asked only for a valid session or none,
      while the store answers: core/memo.py), counted by the memo itself;
    - forwardauth_sessions_opened_total: session cookies decrypted and
      parsed, not found among those already opened (core/credentials.py);
      its rate is the sessions opened per second.
    """

    def __init__(self) -> None:
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self._memo: dict[str, list[int]] = {}

    def latency(self, endpoint: str) -> tuple[list[int], list[float]]:
        """(bucket counts, [sum of seconds]) of `endpoint`: the last count is +Inf's."""
        return self._latency.setdefault(endpoint, ([0] * (len(BUCKETS) + 1), [0.0]))

    def memo(self, endpoint: str) -> list[int]:
        """[hits, misses] of `endpoint`'s memo, kept across reloads (each runtime's memo counts into it)."""
        return self._memo.setdefault(endpoint, [0, 0])

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily("forwardauth_decision_duration_seconds",
                                     "Time to decide one request of a decision endpoint (from the handler's "
                                     "start to its response object).", labels=["endpoint"])
        for endpoint, (counts, sums) in sorted(self._latency.items()):
            running, buckets = 0, []
            for bound, n in zip((*(str(b) for b in BUCKETS), "+Inf"), counts, strict=True):
                running += n
                buckets.append((bound, running))
            hist.add_metric([endpoint], buckets, sums[0])
        yield hist
        hits = CounterMetricFamily("forwardauth_memo_hits", "Decisions answered from the decision memo.",
                                   labels=["endpoint"])
        misses = CounterMetricFamily("forwardauth_memo_misses", "Decisions the memo was asked for and did not "
                                     "have (then decided in full).", labels=["endpoint"])
        for endpoint, (h, m) in sorted(self._memo.items()):
            hits.add_metric([endpoint], h)
            misses.add_metric([endpoint], m)
        yield hits
        yield misses
        yield CounterMetricFamily("forwardauth_sessions_opened", "Session cookies decrypted and parsed (not "
                                  "found among those already opened).", value=OPENED[0])


DECISIONS = DecisionCounter()
REGISTRY.register(DECISIONS)
STATS = DecisionStats()
REGISTRY.register(STATS)


class AuditLost:
    """forwardauth_audit_lines_lost_total: audit lines this process could not
    write, by reason (services.audit.LOST): auth events may be dropped when the
    audit sink fails, never silently."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        from forwardauth.services.audit import LOST

        family = CounterMetricFamily("forwardauth_audit_lines_lost", "Audit lines lost (not written), by reason.",
                                     labels=["reason"])
        for reason in ("write_failed", "short_write", "queue_full"):
            family.add_metric([reason], LOST[reason])
        yield family


REGISTRY.register(AuditLost())


class SuppressedLines:
    """forwardauth_log_lines_suppressed_total{what}: log lines left out by each
    named core.logs.Throttle (denials, refused requests, refused heads, ...)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("forwardauth_log_lines_suppressed",
                                     "Log lines left out by a rate limit (the events are still counted), by kind.",
                                     labels=["what"])
        for name, throttle in sorted(THROTTLES.items()):
            family.add_metric([name], throttle.total_suppressed)
        yield family


REGISTRY.register(SuppressedLines())


APP_METRICS = web.AppKey("app_metrics", CollectorRegistry)


def app_registry(app: web.Application) -> CollectorRegistry:
    """This app's own registry (made on first use, in a part's build)."""
    registry = app.get(APP_METRICS)
    if registry is None:
        registry = app[APP_METRICS] = CollectorRegistry()
    return registry


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest()
    own = request.app.get(APP_METRICS)
    if own is not None:
        body += generate_latest(own)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
