"""Emptying the caches a reload leaves behind, an entry at a time, off the event loop.

After a reload the decision endpoints build new pipelines, and the old ones'
memo tables (`server.memo_entries` entries each, four tables) and the old
runtime's opened cookies and per-host tables are freed when their last
reference goes. Freeing a hundred thousand objects is one uninterrupted
stretch of C (24 ms for one full memo, measured) on whichever thread drops
that reference: the event loop's, holding up every decision queued behind it.
So the tables are handed to this daemon thread first, which empties them one
entry at a time; between entries the interpreter gives the loop its turn
(every switch interval), and what is left to free at the end is small.

Only caches are emptied, never a configuration or policy: an emptied cache is
still a correct one (a request that still holds it recomputes what it
needs), so a table handed over here while some request uses it costs that
request time, never a wrong answer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

_queue: queue.SimpleQueue[list[MutableMapping[Any, Any]]] = queue.SimpleQueue()
_started = threading.Lock()
_thread: threading.Thread | None = None


def retire(tables: Iterable[MutableMapping[Any, Any]]) -> None:
    """Empty `tables` on the retiring thread (started on first use)."""
    global _thread
    _queue.put(list(tables))
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="forwardauth-retire", daemon=True)
            _thread.start()


def _run() -> None:
    while True:
        for table in _queue.get():
            empty(table)


def empty(table: MutableMapping[Any, Any]) -> None:
    """`table` emptied an entry at a time (each popitem frees one entry: short, and interruptible between)."""
    while table:
        try:
            table.popitem()
        except KeyError:  # emptied meanwhile by its owner
            return
