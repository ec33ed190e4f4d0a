"""The `limits:` section: defaults, the example file's values, and each bad value's message."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardauth.composition import load_config
from forwardauth.core.errors import ConfigError
from forwardauth.core.limits import Limits

from .conftest import make_config

EXAMPLE = Path(__file__).parents[2] / "config.example.yaml"


def test_defaults():
    assert make_config("policy: {rules: []}").limits == Limits(
        max_connections=10_000, keepalive_timeout=130.0, header_timeout=10.0, header_bytes=8190, headers=128,
        body_timeout=10.0, denial_log_lines=10)


def test_the_example_file_states_the_defaults():
    assert load_config(EXAMPLE).limits == Limits()


def test_every_key_is_read():
    cfg = make_config("""
        limits: {max_connections: 100, keepalive_timeout: 75s, header_timeout: 500ms, header_bytes: 16384,
                 headers: 64, body_timeout: 30s, denial_log_lines: 0}
        policy: {rules: []}
        """)
    assert cfg.limits == Limits(100, 75.0, 0.5, 16384, 64, 30.0, 0)


@pytest.mark.parametrize("text, problem", [
    ("limits: {max_connections: 5}", "limits.max_connections: must be an integer from 16 to 1000000, got 5"),
    ("limits: {max_connections: true}", "limits.max_connections: must be an integer from 16 to 1000000, got True"),
    ("limits: {headers: '100'}", "limits.headers: must be an integer from 16 to 1024, got '100'"),
    ("limits: {header_bytes: 100000}", "limits.header_bytes: must be an integer from 1024 to 65536, got 100000"),
    ("limits: {keepalive_timeout: 2h}", "limits.keepalive_timeout: must be from 1s to 1h, got 2h"),
    ("limits: {header_timeout: 0}", "limits.header_timeout: must be from 0.1s to 5m, got 0s"),
    ("limits: {body_timeout: soon}", "limits.body_timeout: not a duration: 'soon' (use e.g. 90s, 15m, 12h, 30d)"),
    ("limits: {denial_log_lines: -1}", "limits.denial_log_lines: must be an integer from 0 to 100000, got -1"),
    ("limits: {max_conections: 10}", "limits.max_conections: unknown key (allowed: body_timeout, denial_log_lines, "
                                     "header_bytes, header_timeout, headers, keepalive_timeout, max_connections)"),
    ("limits: [1]", "limits: must be a mapping, got [1]"),
])
def test_bad_values(text, problem):
    with pytest.raises(ConfigError) as err:
        make_config(text + "\npolicy: {rules: []}\n")
    assert err.value.problems == [f"test.yaml: {problem}"]
