"""Prometheus metrics. Counters are per process (each worker has its own)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

DECISIONS = Counter(
    "forwardauth_decisions_total",
    "Decisions answered, by endpoint and outcome.",
    ["endpoint", "outcome"],
)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
