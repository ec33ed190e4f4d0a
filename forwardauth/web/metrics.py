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
from prometheus_client.metrics_core import CounterMetricFamily

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


DECISIONS = DecisionCounter()
REGISTRY.register(DECISIONS)


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
