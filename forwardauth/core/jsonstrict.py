"""JSON read strictly: one reading only, bounded nesting.

Python's json module keeps the last of two equal keys, accepts NaN and
Infinity, and fails with RecursionError (not ValueError) on deep nesting.
For input that decides who someone is (an ID token's claims, a provider's
answer, an admin API request) a document that two readers could read two
ways is refused: `{"sub": "alice", "sub": "admin"}` is alice to one parser
and admin to another. So: duplicate keys, NaN/Infinity, invalid UTF-8 and
nesting deeper than `max_depth` raise `JsonError`, whose message is safe to
show (it never quotes the input).
"""

from __future__ import annotations

import json
from typing import Any


class JsonError(ValueError):
    """Not one unambiguous JSON document within the limits. The message quotes nothing of the input."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise JsonError("a key appears twice in one object")
    return d


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


class StrictDecoder(json.JSONDecoder):
    """For libraries that take a decoder class (joserfc's `decoder_cls`): duplicate keys and
    NaN/Infinity raise JsonError. Nesting is not bounded here: check `depth` on the result,
    and catch RecursionError around the call."""

    def __init__(self, **kw: Any) -> None:
        kw.update(object_pairs_hook=_pairs, parse_constant=_constant)
        super().__init__(**kw)


_DECODER = StrictDecoder()
NOT_JSON = "not valid JSON"  # the message of a text that does not parse (no detail: it may quote the input)


def loads(raw: bytes | str, max_depth: int = 16) -> Any:
    """The value of `raw`, or JsonError."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise JsonError("not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"nested deeper than {max_depth} levels") from None
    except ValueError:  # json.JSONDecodeError, and int() of over 4300 digits
        raise JsonError(NOT_JSON) from None
    if depth(value, max_depth) > max_depth:
        raise JsonError(f"nested deeper than {max_depth} levels")
    return value


def depth(value: Any, stop: int) -> int:
    """How deep `value` nests (a scalar is 0, [] and {} are 1), counted up to `stop` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        d += 1
        if d > deepest:
            deepest = d
            if deepest > stop:
                return deepest
        stack.extend((child, d) for child in v if isinstance(child, (dict, list)))
    return deepest
