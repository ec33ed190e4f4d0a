"""Structured logs: one JSON object per line on stderr.

Callers pass facts as `extra={"fields": {...}}`; nothing secret is ever
passed (cookies, tokens and passwords are not fields anywhere).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Every named Throttle, for forwardauth_log_lines_suppressed_total{what} (web/metrics.py).
THROTTLES: dict[str, Throttle] = {}


class Throttle:
    """At most `per_interval` lines per `interval` seconds from one call site;
    the rest are counted, and the next line that is written carries how many
    were left out (`suppressed`). A flood of bad requests is then a counter,
    not a flood on the disk. With a `name`, the lines left out since start
    are exported as a metric. The event loop is one thread: no lock."""

    def __init__(self, per_interval: int = 10, interval: float = 1.0, name: str | None = None):
        self.per_interval, self.interval = per_interval, interval
        self._window = 0.0
        self._written = 0
        self.suppressed = 0  # left out since the last line written
        self.total_suppressed = 0  # left out since start
        if name is not None:
            THROTTLES[name] = self

    def allow(self) -> int | None:
        """None when this line is to be left out; else how many were left out before it."""
        now = time.monotonic()
        if now - self._window >= self.interval:
            self._window, self._written = now, 0
        if self._written >= self.per_interval:
            self.suppressed += 1
            self.total_suppressed += 1
            return None
        self._written += 1
        skipped, self.suppressed = self.suppressed, 0
        return skipped
