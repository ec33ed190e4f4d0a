"""A value shown in an error message, bounded however large the value is.

`repr()` of a value read from YAML is as large as the value: a list that
holds itself a few levels deep through aliases has a repr of gigabytes,
built in full before it could be cut. `show` walks at most a few elements
of a few levels (reprlib), so its cost does not depend on the value.
"""

from __future__ import annotations

import itertools
import reprlib


class _Bounded(reprlib.Repr):
    """reprlib's dict and set summaries sort every key first: these take the first few as they come."""

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_set(self, x: set, level: int) -> str:
        if not x:
            return "set()"
        items = [self.repr1(v, level - 1) for v in itertools.islice(x, self.maxset)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxset else "") + "}"


_REPR = _Bounded()  # keyword arguments to Repr() only from Python 3.12
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 70, 40, 70

def show(value: object, limit: int = 80) -> str:
    """`repr(value)` for short values; a bounded summary of long or deep ones, at most `limit` characters."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
