"""Decisions that keep flowing while a fault is made: each check is asked
again and again from a thread, and every answer is recorded with its time
(seconds since the flow started), so a test can say what was answered
before, during and after the fault, and that nothing was ever let through
that should not have been."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    at: float  # seconds since the flow started
    check: str
    status: int  # 0: no answer (connection refused, timeout)
    took: float  # seconds the answer took


class Flow:
    def __init__(self, checks: dict[str, Callable[[], int]], pause: float = 0.05):
        self.checks = checks
        self.pause = pause
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)
        self.t0 = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, check in self.checks.items():
                start = time.monotonic()
                try:
                    status = check()
                except OSError:
                    status = 0
                self.answers.append(Answer(start - self.t0, name, status, time.monotonic() - start))
            time.sleep(self.pause)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> Flow:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def __enter__(self) -> Flow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def of(self, check: str, since: float = 0.0, until: float = float("inf")) -> list[Answer]:
        return [a for a in self.answers if a.check == check and since <= a.at < until]

    def statuses(self, check: str, since: float = 0.0, until: float = float("inf")) -> set[int]:
        return {a.status for a in self.of(check, since, until)}

    def first(self, check: str, status: int, since: float = 0.0) -> float | None:
        """When `check` was first answered `status` (at or after `since`), or None."""
        return next((a.at for a in self.of(check, since) if a.status == status), None)

    def wait(self, check: str, status: int, within: float, since: float | None = None) -> float:
        """Wait until `check` is answered `status`; when it was. Fails after `within` seconds."""
        since = self.now() if since is None else since
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            at = self.first(check, status, since)
            if at is not None:
                return at
            time.sleep(0.02)
        raise AssertionError(f"{check} not answered {status} within {within}s; answers since {since:.1f}s: "
                             f"{sorted(self.statuses(check, since))}")

    def table(self) -> str:
        """Per check: how many answers of each status (for failure messages and the report)."""
        out = []
        for name in self.checks:
            counts: dict[int, int] = {}
            for a in self.of(name):
                counts[a.status] = counts.get(a.status, 0) + 1
            out.append(f"{name}: {dict(sorted(counts.items()))}")
        return "; ".join(out)
