"""The `devices:` config section: defaults, every option, and each error with its place."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from forwardauth.core.config import Reader
from forwardauth.devices.settings import DevicesSettings, Limits, parse

from .conftest import make_config

LEVELS = make_config("policy: {rules: []}\n").levels  # password < mfa < hardware


def read(text: str) -> tuple[DevicesSettings, Reader]:
    r = Reader("test.yaml")
    raw = yaml.safe_load(textwrap.dedent(text))
    return parse(r, raw["devices"], {"levels": LEVELS}), r


def test_defaults_with_a_level():
    s, r = read("devices: {level: mfa}")
    assert r.problems == [] and r.warnings == []
    assert s == DevicesSettings(True, "mfa", 600.0, 50.0, 120.0, 600.0, 5, True, Limits(10, 5, 20, 600.0))


def test_every_option():
    s, r = read("""
        devices:
          enabled: true
          level: hardware
          pairing_max_age: 5m
          poll_timeout: 25s
          request_ttl: 90s
          pairing_ttl: 15m
          max_devices: 3
          passwordless: false
          limits: {polls_per_user: 4, requests_per_user: 2, requests_per_client: 7, window: 1h}
        """)
    assert r.problems == []
    assert s == DevicesSettings(True, "hardware", 300.0, 25.0, 90.0, 900.0, 3, False, Limits(4, 2, 7, 3600.0))


def test_disabled_needs_no_level():
    s, r = read("devices: {enabled: false}")
    assert r.problems == [] and s.enabled is False and s.level == ""


@pytest.mark.parametrize("text, problem", [
    ("devices: {}", "test.yaml: devices.level: required: the level an approval proves "
                    "(levels: password, mfa, hardware)"),
    ("devices: {level: gold}", "test.yaml: devices.level: unknown level 'gold' (levels: password, mfa, hardware)"),
    ("devices: {level: [mfa]}", "test.yaml: devices.level: unknown level ['mfa'] (levels: password, mfa, hardware)"),
    ("devices: {level: mfa, enabled: yes please}", "test.yaml: devices.enabled: must be true or false, "
                                                   "got 'yes please'"),
    ("devices: {level: mfa, poll_timeout: 0s}", "test.yaml: devices.poll_timeout: must be from 1s to 10m, got '0s'"),
    ("devices: {level: mfa, poll_timeout: 11m}", "test.yaml: devices.poll_timeout: must be from 1s to 10m, "
                                                 "got '11m'"),
    ("devices: {level: mfa, poll_timeout: soon}", "test.yaml: devices.poll_timeout: not a duration: 'soon' "
                                                  "(use e.g. 90s, 15m, 12h, 30d)"),
    ("devices: {level: mfa, request_ttl: 5s}", "test.yaml: devices.request_ttl: must be from 10s to 30m, got '5s'"),
    ("devices: {level: mfa, pairing_ttl: 2d}", "test.yaml: devices.pairing_ttl: must be from 30s to 1d, got '2d'"),
    ("devices: {level: mfa, pairing_max_age: 1s}", "test.yaml: devices.pairing_max_age: must be from 10s to 1d, "
                                                   "got '1s'"),
    ("devices: {level: mfa, max_devices: 0}", "test.yaml: devices.max_devices: must be an integer from 1 to 100, "
                                              "got 0"),
    ("devices: {level: mfa, max_devices: true}", "test.yaml: devices.max_devices: must be an integer from 1 to 100, "
                                                 "got True"),
    ("devices: {level: mfa, passwordless: 1}", "test.yaml: devices.passwordless: must be true or false, got 1"),
    ("devices: {level: mfa, limits: {polls_per_user: 0}}", "test.yaml: devices.limits.polls_per_user: must be an "
                                                            "integer from 1 to 1000, got 0"),
    ("devices: {level: mfa, limits: {requests_per_user: many}}", "test.yaml: devices.limits.requests_per_user: "
                                                                  "must be an integer from 1 to 1000, got 'many'"),
    ("devices: {level: mfa, limits: {requests_per_client: 0}}", "test.yaml: devices.limits.requests_per_client: "
                                                                 "must be an integer from 1 to 100000, got 0"),
    ("devices: {level: mfa, limits: {window: 1s}}", "test.yaml: devices.limits.window: must be from 10s to 1d, "
                                                    "got '1s'"),
    ("devices: {level: mfa, limits: 5}", "test.yaml: devices.limits: must be a mapping, got 5"),
    ("devices: {level: mfa, polltimeout: 5s}", "test.yaml: devices.polltimeout: unknown key (allowed: enabled, "
                                               "level, limits, max_devices, pairing_max_age, pairing_ttl, "
                                               "passwordless, poll_timeout, request_ttl)"),
    ("devices: {level: mfa, limits: {window: 1m, burst: 3}}", "test.yaml: devices.limits.burst: unknown key "
                                                              "(allowed: polls_per_user, requests_per_client, "
                                                              "requests_per_user, window)"),
    ("devices: [mfa]", "test.yaml: devices: must be a mapping, got ['mfa']"),
])
def test_each_error_names_file_section_and_field(text, problem):
    _, r = read(text)
    assert r.problems == [problem]


def test_every_problem_reported_together():
    _, r = read("devices: {level: gold, poll_timeout: 0s, max_devices: 0, limits: {window: 1s}}")
    assert [p.split(":")[1].strip() for p in r.problems] == [
        "devices.level", "devices.poll_timeout", "devices.max_devices", "devices.limits.window"]


def test_poll_timeout_above_common_proxy_timeouts_warns():
    s, r = read("devices: {level: mfa, poll_timeout: 58s}")
    assert r.problems == [] and s.poll_timeout == 58.0
    assert r.warnings == ["test.yaml: devices.poll_timeout: 58s is above what a default nginx (proxy_read_timeout "
                          "60s) or a 60s load balancer lets an answer take: raise those above it, or use 50s"]
    _, r = read("devices: {level: mfa, poll_timeout: 55s}")
    assert r.warnings == []


def test_example_devices_section_is_valid_when_uncommented():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "config.example.yaml").read_text()
    block = text[text.index("# devices:"):].split("\n\n")[0]
    yaml_block = "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines())
    s, r = read(yaml_block)
    assert r.problems == [] and r.warnings == []
    assert s == DevicesSettings(True, "mfa")  # the example shows the defaults


def test_embedded_default_turns_approval_on_at_mfa(tmp_path):
    from forwardauth.composition import parse_config
    from forwardauth.core.defaults import embedded_default
    from forwardauth.devices.settings import settings

    cfg = embedded_default(tmp_path / "var", parse_config)
    assert settings(cfg) == DevicesSettings(True, "mfa")
