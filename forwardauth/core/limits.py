"""The `limits:` section: how much of each input one worker accepts, and for how long.

forwardauth answers for every request of every app behind it, so nothing a
client sends may hold a worker's memory, descriptors or time without bound.
The limits an operator may need to change are here; the ones no deployment
needs to change are constants next to the code that applies them (listed in
config.example.yaml with their values). What happens at each limit:

- `max_connections` open connections per worker: the next one first closes
  the connection that has waited longest for a request (idle, or sending a
  head); when every connection is busy with a request, the new one is
  answered 503 and closed. The soft descriptor limit is raised toward the
  hard one at start, and the cap is lowered (with a warning) when the
  descriptors cannot hold it.
- `keepalive_timeout`: a kept-alive connection with no request for this long
  is closed. Longer than the proxies' own pool idle timeouts (nginx 60 s,
  Traefik 90 s, Caddy 2 m), so that normally the proxy closes first.
- `header_timeout`: a request head (request line and headers) must arrive
  whole within this, counted from the connection's start or from the head's
  first byte (a head begun while an answer is pending: at the first
  header_timeout step after it is sent): an unfinished head is answered 408 and closed; a new
  connection that sends nothing is closed (and so, without the 408, is one
  idle after pipelined bytes aiohttp held back: web/connections.py).
- `header_bytes`: the request line and each header line; `headers`: header
  fields per request. Over either: 431 (414 for the request line), closed.
- `body_timeout`: a request body must arrive whole within this: 408.
- `denial_log_lines`: "decision" log lines per second per worker for denied
  requests; the rest are counted (forwardauth_log_lines_suppressed_total)
  and the next line written says how many were left out.

Connection limits apply at start (a reload keeps the running ones); body
and log limits are read per request, so a reload changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forwardauth.core.config import Reader

# Fixed limits, for config.example.yaml and the docs (each applied where it is defined):
#   session cookie value     3800 bytes  (core.credentials.MAX_COOKIE_BYTES)
#   form bodies              8 KiB, 16 fields (web.forms / signin settings)
#   JSON bodies (admin API)  16 KiB, nesting depth 16 (web.bodies)
#   provider documents       256 KiB, nesting depth 32 (oidc.client)
#   YAML config              alias expansion bounded (core.yamlsafe)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10_000
    keepalive_timeout: float = 130.0
    header_timeout: float = 10.0
    header_bytes: int = 8190
    headers: int = 128
    body_timeout: float = 10.0
    denial_log_lines: int = 10


_KEYS = {"max_connections", "keepalive_timeout", "header_timeout", "header_bytes", "headers", "body_timeout",
         "denial_log_lines"}


def parse_limits(r: Reader, raw: Any) -> Limits:
    """The `limits:` section (every key optional)."""
    w = "limits"
    d = r.mapping(raw, w, _KEYS)
    dflt = Limits()
    return Limits(
        max_connections=r.integer(d, "max_connections", "limits", dflt.max_connections, 16, 1_000_000),
        keepalive_timeout=_seconds(r, d, "keepalive_timeout", dflt.keepalive_timeout, 1.0, 3600.0),
        header_timeout=_seconds(r, d, "header_timeout", dflt.header_timeout, 0.1, 300.0),
        header_bytes=r.integer(d, "header_bytes", "limits", dflt.header_bytes, 1024, 65536),
        headers=r.integer(d, "headers", "limits", dflt.headers, 16, 1024),
        body_timeout=_seconds(r, d, "body_timeout", dflt.body_timeout, 0.1, 300.0),
        denial_log_lines=r.integer(d, "denial_log_lines", "limits", dflt.denial_log_lines, 0, 100_000),
    )


def _seconds(r: Reader, d: dict, key: str, default: float, lo: float, hi: float) -> float:
    from forwardauth.core.durations import format_duration

    v = r.duration(d, key, "limits", default)
    if v is None:
        return default
    if not lo <= v <= hi:
        r.error(f"limits.{key}", f"must be from {format_duration(lo)} to {format_duration(hi)}, "
                                 f"got {format_duration(v)}")
        return default
    return v
