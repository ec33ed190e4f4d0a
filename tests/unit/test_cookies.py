"""The hot path's own Cookie-header parser and the opened-session cache."""

import pytest

from forwardauth.core.config import SessionConfig
from forwardauth.core.cookies import cookie_value, set_cookie


@pytest.mark.parametrize("header,expected", [
    (None, None),
    ("", None),
    ("fa=abc", "abc"),
    ("x=1; fa=k1.AAA; y=2", "k1.AAA"),
    ("xfa=1; fa_login_x=2", None),        # names must match exactly
    ("fa=first; fa=second", "first"),
    ("fa", None),
    (" fa = v ", "v"),
    ("fa=", ""),
])
def test_cookie_value(header, expected):
    assert cookie_value(header, "fa") == expected


def test_set_cookie_flags():
    cfg = SessionConfig(cookie_name="__Secure-fa", domain=".example.com", secure=True, same_site="Lax")
    assert set_cookie(cfg, "__Secure-fa", "v", 60) == (
        "__Secure-fa=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure; Domain=.example.com")
    host = SessionConfig(cookie_name="__Host-fa", secure=True)
    assert "Domain" not in set_cookie(host, "__Host-fa", "v", 60)


def test_opened_sessions_are_cached_but_still_time_checked(ring):
    from forwardauth.core.credentials import SessionCodec
    from forwardauth.core.levels import Level, Levels
    from forwardauth.core.sealing import Sealer

    c = SessionCodec(Sealer(ring, "s"), Levels((Level("password", 0),)), lifetime=3600, idle_timeout=600)
    now = 1_800_000_000.0
    cookie = c.seal(c.new("alice", "password", now))
    first = c.open(cookie, now).session
    assert c.open(cookie, now + 1).session is first  # decrypted once
    assert c.open(cookie, now + 601).reason == "idle"  # the cache does not skip the clock
    assert c.open(cookie[:-2] + "AA", now).session is None
