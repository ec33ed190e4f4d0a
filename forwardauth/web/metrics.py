"""Prometheus metrics. Counters are per process (each worker has its own)."""

from __future__ import annotations

from enum import Enum
from typing import Iterable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily


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


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
