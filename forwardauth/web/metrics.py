"""Prometheus metrics. Counters are per process (each worker has its own)."""

from __future__ import annotations

import collections
from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily


class Counter:
    """One labelled child of DecisionCounter: `inc()` is a dict increment."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: collections.Counter[tuple[str, str]], key: tuple[str, str]):
        self._counts, self._key = counts, key

    def inc(self) -> None:
        self._counts[self._key] += 1


class DecisionCounter:
    """forwardauth_decisions_total, counted in a plain dict.

    prometheus_client's Counter takes a lock on every increment, which is a
    visible share of a decision served from memory. The event loop is one
    thread, so a dict needs no lock; the registry reads it when scraped.
    """

    name = "forwardauth_decisions"
    doc = "Decisions answered, by endpoint and outcome."

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def labels(self, endpoint: str, outcome: str) -> Counter:
        self._counts[(endpoint, outcome)] += 0  # listed from the start, at 0
        return Counter(self._counts, (endpoint, outcome))

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=["endpoint", "outcome"])
        for (endpoint, outcome), n in sorted(self._counts.items()):
            family.add_metric([endpoint, outcome], n)
        yield family


DECISIONS = DecisionCounter()
REGISTRY.register(DECISIONS)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
