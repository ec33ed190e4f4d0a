"""A bounded mapping that drops its least recently used entry when full.

The decision path's caches (memo.py, the opened cookies, the policy's
per-host candidates, the parsed request contexts) hold values made from
client-supplied input, so each must be bounded; least recently used out
first keeps what is in use when the working set is larger than the cache,
instead of emptying everything when full. OrderedDict is in C: `get` is a
dict lookup and `move_to_end` a pointer swap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Lru(OrderedDict[Any, Any]):
    """`get` does not count as a use: callers call `move_to_end` on a hit (the
    hot path then makes exactly the calls it needs); `put` inserts, dropping
    the least recently used entry first when full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        if limit < 1:
            raise ValueError("an Lru holds at least one entry")
        self.limit = limit

    def put(self, key: object, value: object) -> None:
        if len(self) >= self.limit:  # (a key already in: called after a miss, so rare; one entry less for a while)
            self.popitem(last=False)
        self[key] = value
