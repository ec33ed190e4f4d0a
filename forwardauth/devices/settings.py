"""The `devices:` config section.

    devices:
      enabled: true
      level: mfa              # the level an approval proves (required)
      pairing_max_age: 10m    # adding a device needs `level`, proven this recently
      poll_timeout: 50s       # a long-poll with nothing new answers 304 after this
      request_ttl: 2m         # how long an approval request waits for the device
      pairing_ttl: 10m        # how long a pairing code can be used (once)
      max_devices: 5          # per user
      passwordless: true      # the sign-in page offers "Approve on my device"
      limits:
        polls_per_user: 10    # waiting polls of one user on one process
        requests_per_user: 5  # approval requests per user per window
        requests_per_client: 20   # ... per browser address per window
        window: 10m

`poll_timeout` and the proxies in front. A long-poll is a request whose
answer is late on purpose, so every timeout on the way that limits how long
an *answer* may take must be longer than `poll_timeout`, or the proxy cuts
the poll with a 504 and the device reconnects (works, but wastes the kept
connection that the 304 exists to keep):
  - nginx: `proxy_read_timeout` (default 60s) is the one that matters;
    `keepalive_timeout` (default 75s) only limits the idle time *between*
    requests on a client connection, and the device sends its next poll at
    once, so it never idles that long.
  - Traefik: `entryPoints.<name>.transport.respondingTimeouts.writeTimeout`
    (default 0, none) bounds the whole answer when set; `readTimeout`
    (default 60s) covers reading the request only, and `idleTimeout`
    (default 180s) the time between requests, so neither cuts a waiting
    poll (tests/integration/test_devices_proxies.py checks all three).
  - Caddy: `servers.timeouts.write` (default none) and reverse_proxy's
    `transport http { read_timeout }` (default none); `idle` (default 5m)
    is between requests.
  - Cloud load balancers commonly cut idle connections at 60s.
The 50s default stays under all of these with a margin; a larger value
gets a warning (`forwardauth check` shows it). The shipped proxy configs
in examples/ say the same next to the timeouts they set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forwardauth.core.config import Config, Reader, show
from forwardauth.core.durations import format_duration
from forwardauth.core.levels import Levels

SECTION = "devices"
# Above this, a default nginx (proxy_read_timeout 60s) or a 60s cloud load
# balancer may cut the poll before it answers: warn, with a margin for clocks.
POLL_TIMEOUT_WARN = 55.0


@dataclass(frozen=True)
class Limits:
    polls_per_user: int = 10  # waiting long-polls of one user on one process
    requests_per_user: int = 5  # approval requests per user per window
    requests_per_client: int = 20  # approval requests per browser address per window
    window: float = 600.0


@dataclass(frozen=True)
class DevicesSettings:
    enabled: bool = False
    level: str = ""  # the level an approval proves; required when enabled
    pairing_max_age: float = 600.0  # the session must have proven `level` this recently to add a device
    poll_timeout: float = 50.0
    request_ttl: float = 120.0
    pairing_ttl: float = 600.0
    max_devices: int = 5
    passwordless: bool = True
    limits: Limits = Limits()


def settings(config: Config) -> DevicesSettings:
    """The section, or approval off when there is none."""
    found = config.sections.get(SECTION)
    return found if isinstance(found, DevicesSettings) else DevicesSettings()


def _seconds(r: Reader, d: dict, key: str, where: str, default: float, lo: float, hi: float) -> float:
    v = r.duration(d, key, where, default)
    if v is None:
        return default
    if not lo <= v <= hi:
        r.error(f"{where}.{key}", f"must be from {format_duration(lo)} to {format_duration(hi)}, got {show(d[key])}")
        return default
    return v


def parse(r: Reader, raw: Any, so_far: dict[str, Any]) -> DevicesSettings:
    """The section's parser (the signature every part's section parser has).

    An empty section (`devices: {}`) turns approval on with the defaults,
    like `local: {}`; it still needs `level`, because there is no safe
    default for what an approval proves.
    """
    w = SECTION
    if raw is not None and not isinstance(raw, dict):
        r.mapping(raw, w, set())  # the one problem; nothing further to read
        return DevicesSettings()
    d = r.mapping(raw, w, {"enabled", "level", "pairing_max_age", "poll_timeout", "request_ttl", "pairing_ttl",
                           "max_devices", "passwordless", "limits"})
    levels: Levels = so_far["levels"]
    enabled = r.boolean(d, "enabled", w, True)
    level = d.get("level")
    if level is None:
        if enabled:
            r.error(f"{w}.level", f"required: the level an approval proves (levels: {', '.join(levels.names)})")
        level = ""
    elif not isinstance(level, str) or level not in levels:
        r.error(f"{w}.level", f"unknown level {show(level)} (levels: {', '.join(levels.names)})")
        level = ""
    dflt = DevicesSettings()
    pairing_max_age = _seconds(r, d, "pairing_max_age", w, dflt.pairing_max_age, 10, 86400)
    poll_timeout = _seconds(r, d, "poll_timeout", w, dflt.poll_timeout, 1, 600)
    if poll_timeout > POLL_TIMEOUT_WARN:
        r.warning(f"{w}.poll_timeout", f"{format_duration(poll_timeout)} is above what a default nginx "
                                       f"(proxy_read_timeout 60s) or a 60s load balancer lets an answer take: "
                                       f"raise those above it, or use 50s")
    request_ttl = _seconds(r, d, "request_ttl", w, dflt.request_ttl, 10, 1800)
    pairing_ttl = _seconds(r, d, "pairing_ttl", w, dflt.pairing_ttl, 30, 86400)
    max_devices = r.integer(d, "max_devices", w, dflt.max_devices, 1, 100)
    passwordless = r.boolean(d, "passwordless", w, True)

    lw = f"{w}.limits"
    ld = r.mapping(d.get("limits"), lw, {"polls_per_user", "requests_per_user", "requests_per_client", "window"})
    ldef = Limits()
    limits = Limits(
        r.integer(ld, "polls_per_user", lw, ldef.polls_per_user, 1, 1000),
        r.integer(ld, "requests_per_user", lw, ldef.requests_per_user, 1, 1000),
        r.integer(ld, "requests_per_client", lw, ldef.requests_per_client, 1, 100000),
        _seconds(r, ld, "window", lw, ldef.window, 10, 86400),
    )
    return DevicesSettings(enabled, level, pairing_max_age, poll_timeout, request_ttl, pairing_ttl, max_devices,
                           passwordless, limits)
