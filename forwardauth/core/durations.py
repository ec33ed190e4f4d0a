"""Human durations ("90s", "15m", "12h", "30d") for config and CLI flags.

Kept apart so that config errors and CLI flags parse durations the same way.
"""

from __future__ import annotations

import math
import re

from forwardauth.core.shown import show

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string with one unit suffix.

    Raises ValueError with the offending value; negative, absurd (more than
    ten years) and non-finite values (YAML's .nan, .inf) are refused because
    they are always mistakes: a NaN max_age or lifetime compares false with
    every time, so it would never expire.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {show(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _RE.match(value)
        if not m:
            raise ValueError(f"not a duration: {show(value)} (use e.g. 90s, 15m, 12h, 30d)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"not a duration: {show(value)}")
    if not math.isfinite(seconds) or seconds < 0 or seconds > 10 * 365 * 86400:
        raise ValueError(f"duration out of range: {show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, for explanations and errors."""
    s = int(seconds)
    if s != seconds:
        return f"{seconds:g}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
