"""Which local step /oauth2/start picks: a pure table."""

import pytest

from forwardauth.core.levels import Level, Levels
from forwardauth.core.session import Session
from forwardauth.signin.flow import Step, next_step

LEVELS = Levels((Level("password", 0), Level("mfa", 1, local_factor="totp"), Level("hardware", 2)))


def s(level: str, source: str = "local") -> Session:
    return Session("sid", "alice", level, {level: 0.0}, 0.0, 1e12, 0.0, source=source)


@pytest.mark.parametrize("session, need, local, totp, upstream_first, expected", [
    (None, "password", True, False, False, Step.PASSWORD),
    (None, "mfa", True, False, False, Step.PASSWORD),  # password first, then back for TOTP
    (None, "password", False, False, False, None),  # no local sign-in: upstream or nothing
    (None, "password", True, False, True, None),  # the person chose the upstream provider
    (s("password"), "mfa", True, True, False, Step.TOTP),
    (s("password"), "mfa", True, False, False, Step.ENROL),
    (s("password", "oidc"), "mfa", False, True, False, Step.TOTP),  # TOTP on an upstream session
    (s("password", "oidc"), "mfa", False, False, False, Step.ENROL),
    (s("password", "oidc"), "mfa", True, False, True, Step.ENROL),  # a local factor still goes first
    (s("mfa"), "mfa", True, True, False, Step.TOTP),  # stale mfa (max_age): a fresh code
    (s("mfa"), "password", True, True, False, Step.PASSWORD),  # stale password (max_age): the password
    (s("password", "oidc"), "password", True, False, False, None),  # upstream sessions re-prove upstream
    (s("password"), "hardware", True, True, False, None),  # no local factor proves hardware
    (s("mfa"), "hardware", True, True, False, None),
])
def test_next_step(session, need, local, totp, upstream_first, expected):
    assert next_step(session, need, LEVELS, local_password=local, has_totp=totp, password_level="password",
                     prefer_upstream=upstream_first) is expected


def test_a_totp_level_two_above_is_not_reached_by_totp_alone():
    levels = Levels((Level("basic", 0), Level("password", 1), Level("mfa", 2, local_factor="totp")))
    assert next_step(s("basic", "oidc"), "mfa", levels, local_password=False, has_totp=True,
                     password_level="basic") is None


@pytest.mark.parametrize("held, level, ok", [
    ("basic", "mfa", False),  # two levels up: the password is skipped
    ("password", "mfa", True),
    ("mfa", "mfa", True),  # proving it again (max_age)
    ("hardware", "mfa", True),
    ("basic", "password", False),  # below the password level: never
    ("nope", "mfa", False),
    ("password", "nope", False),
])
def test_can_step_up(held, level, ok):
    from forwardauth.signin.flow import can_step_up

    levels = Levels((Level("basic", 0), Level("password", 1), Level("mfa", 2, local_factor="totp"),
                     Level("hardware", 3)))
    assert can_step_up(held, level, levels, "password") is ok
