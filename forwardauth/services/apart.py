"""Reading a config file in a child process.

Parsing a large policy (10,000 rules: 120,000 YAML events) costs seconds of
CPU and tens of MB of peak memory that the allocator does not give back to
the system. Done in a child process, the parent gets only the validated
Config (pickled, compact) and keeps its CPU meanwhile: `serve` imports the
web stack while the child parses, a reload keeps answering decisions.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")

LARGE_CONFIG = 256 * 1024  # bytes: a config this large is parsed in a child process (about 2,000 rules)


def is_large(path: str) -> bool:
    """Whether `path` is worth a child process: a small config parses in
    milliseconds, less than a child's start (a second or more on a busy machine)."""
    try:
        return os.stat(path).st_size >= LARGE_CONFIG
    except OSError:
        return False


def load_apart(load: Callable[[str], T], path: str, meanwhile: Callable[[], object] | None = None,
               background: bool = False) -> T:
    """`load(path)` in a new child process (spawned: nothing of this process's
    state, threads or event loop is copied), its result pickled back and its
    exception (a ConfigError) raised here. `meanwhile()` runs here while the
    child works. `background`: the child runs at the lowest CPU priority (nice
    19: a reload; the workers' decisions come first, and the reload gets what
    they leave, on a saturated core about 1/70 of it). Raises OSError or
    concurrent.futures' BrokenProcessPool when no child can run."""
    init = _background_priority if background else None
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init) as pool:
        future = pool.submit(load, path)
        if meanwhile is not None:
            meanwhile()
        return future.result()


def _background_priority() -> None:
    os.nice(19)
