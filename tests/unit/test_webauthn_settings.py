"""The `webauthn:` config section: defaults from server.public_url, every option, each error with its place."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
import yaml

from forwardauth.core.config import Reader, parse_config
from forwardauth.webauthn.settings import WebAuthnSettings, origin_of, parse
from harness.softkey import make_attestation

from .conftest import BASE

LEVELS = parse_config(BASE + "policy: {rules: []}\n", "test.yaml").levels


def _server(public_url: str) -> Any:
    cfg = parse_config(BASE.replace("https://auth.example.com", public_url) + "policy: {rules: []}\n", "test.yaml")
    return cfg.server


def read(section: str, public_url: str = "https://auth.example.com", file: str = "test.yaml"):
    """(settings or None, problems, warnings) for a `webauthn:` section given as YAML."""
    r = Reader(file)
    raw = yaml.safe_load(textwrap.dedent(section))
    out = parse(r, raw, {"server": _server(public_url), "levels": LEVELS})
    return out, r.problems, r.warnings


def test_defaults_follow_public_url():
    s, problems, warnings = read("{level_user_verified: hardware}")
    assert problems == [] and warnings == []
    assert s == WebAuthnSettings(rp_id="auth.example.com", origins=("https://auth.example.com",),
                                 level_user_verified="hardware")
    assert (s.rp_name, s.user_verification, s.resident_keys, s.attestation, s.max_credentials, s.timeout,
            s.passwordless, s.level_presence, s.register_level, s.register_max_age) == (
        "forwardauth", "preferred", "preferred", "none", 10, 120.0, True, None, None, 600.0)


def test_every_option():
    s, problems, _ = read("""
        rp_id: example.com
        rp_name: Example Corp
        origins: [https://auth.example.com, "https://login.example.com:8443/", HTTPS://Example.COM:443]
        user_verification: discouraged
        resident_keys: required
        max_credentials: 3
        level_user_verified: hardware
        level_presence: mfa
        timeout: 90s
        passwordless: false
        register_level: mfa
        register_max_age: 5m
    """)
    assert problems == []
    assert s.origins == ("https://auth.example.com", "https://login.example.com:8443", "https://example.com")
    assert (s.rp_id, s.rp_name, s.user_verification, s.resident_keys, s.max_credentials, s.level_user_verified,
            s.level_presence, s.timeout, s.passwordless, s.register_level, s.register_max_age) == (
        "example.com", "Example Corp", "discouraged", "required", 3, "hardware", "mfa", 90.0, False, "mfa", 300.0)


def test_localhost_over_http_is_allowed():
    s, problems, _ = read("{level_user_verified: hardware}", "http://auth.fa.localhost:8080")
    assert problems == [] and s.rp_id == "auth.fa.localhost" and s.origins == ("http://auth.fa.localhost:8080",)


@pytest.mark.parametrize("section, public_url, problem", [
    ("{level_user_verified: hardware}", "http://127.0.0.1:4180",
     "test.yaml: webauthn.rp_id: needed: server.public_url's host 127.0.0.1 is an IP address, which browsers refuse "
     "as a WebAuthn RP ID; give a host name (e.g. localhost) and serve forwardauth on it"),
    ("{rp_id: 127.0.0.1, level_user_verified: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.rp_id: must be a host name (browsers refuse IP addresses), got '127.0.0.1'"),
    ("{rp_id: Example.com:443, level_user_verified: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.rp_id: must be a lower-case host name with no port or scheme, got 'Example.com:443'"),
    ("{level_user_verified: hardware}", "http://auth.example.com",
     "test.yaml: webauthn.origins (default: server.public_url): http://auth.example.com is plain http: browsers "
     "only offer WebAuthn over https (or on localhost)"),
    ("{rp_id: localhost, level_user_verified: hardware}", "http://127.0.0.1:4180",
     "test.yaml: webauthn.origins (default: server.public_url): host 127.0.0.1 is neither the RP ID localhost nor "
     "under it (browsers refuse the ceremony)"),
    ("{origins: [https://evil.example.net], level_user_verified: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.origins[0]: host evil.example.net is neither the RP ID auth.example.com nor under it "
     "(browsers refuse the ceremony)"),
    ("{origins: [https://auth.example.com/login], level_user_verified: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.origins[0]: must be an origin like https://auth.example.com (no path), got "
     "'https://auth.example.com/login'"),
    ("{origins: [], level_user_verified: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.origins: must be a non-empty list of strings, got []"),
    ("{}", "https://auth.example.com",
     "test.yaml: webauthn.level_user_verified: is required: the level this proof gives (levels: password, mfa, "
     "hardware)"),
    ("{level_user_verified: titanium}", "https://auth.example.com",
     "test.yaml: webauthn.level_user_verified: unknown level 'titanium' (levels: password, mfa, hardware)"),
    ("{level_user_verified: mfa, level_presence: hardware}", "https://auth.example.com",
     "test.yaml: webauthn.level_presence: 'hardware' is above level_user_verified 'mfa': a touch without PIN or "
     "biometric cannot prove more than one with it"),
    ("{level_user_verified: hardware, user_verification: always}", "https://auth.example.com",
     "test.yaml: webauthn.user_verification: must be one of preferred, required, discouraged, got 'always'"),
    ("{level_user_verified: hardware, resident_keys: true}", "https://auth.example.com",
     "test.yaml: webauthn.resident_keys: must be one of preferred, required, discouraged, got True"),
    ("{level_user_verified: hardware, attestation: indirect}", "https://auth.example.com",
     "test.yaml: webauthn.attestation: must be one of none, direct, got 'indirect'"),
    ("{level_user_verified: hardware, max_credentials: 0}", "https://auth.example.com",
     "test.yaml: webauthn.max_credentials: must be an integer from 1 to 100, got 0"),
    ("{level_user_verified: hardware, timeout: 5s}", "https://auth.example.com",
     "test.yaml: webauthn.timeout: must be from 10s to 10m, got '5s'"),
    ("{level_user_verified: hardware, rp_name: ''}", "https://auth.example.com",
     "test.yaml: webauthn.rp_name: invalid value ''"),
    ("{level_user_verified: hardware, passwordless: yes please}", "https://auth.example.com",
     "test.yaml: webauthn.passwordless: must be true or false, got 'yes please'"),
    ("{level_user_verified: hardware, colour: blue}", "https://auth.example.com",
     "test.yaml: webauthn.colour: unknown key (allowed: aaguids, attestation, attestation_roots, level_presence, "
     "level_user_verified, max_credentials, origins, passwordless, register_level, register_max_age, "
     "resident_keys, rp_id, rp_name, timeout, user_verification)"),
    ("{level_user_verified: hardware, register_level: gold}", "https://auth.example.com",
     "test.yaml: webauthn.register_level: unknown level 'gold' (levels: password, mfa, hardware)"),
    ("{level_user_verified: hardware, register_max_age: 30s}", "https://auth.example.com",
     "test.yaml: webauthn.register_max_age: must be from 1m to 24h, got '30s'"),
    ("{level_user_verified: hardware, aaguids: [cb69481e-8ff7-4039-93ec-0a2729a154a8]}", "https://auth.example.com",
     "test.yaml: webauthn.aaguids: only applies with attestation: direct"),
    ("{level_user_verified: hardware, attestation: direct, attestation_roots: [/nonexistent/roots.pem]}",
     "https://auth.example.com",
     "test.yaml: webauthn.aaguids: is required with attestation: direct (the authenticator models allowed)"),
    ("{level_user_verified: hardware, attestation: direct, aaguids: [not-a-uuid], "
     "attestation_roots: [/nonexistent/roots.pem]}", "https://auth.example.com",
     "test.yaml: webauthn.aaguids[0]: not an AAGUID (a UUID like cb69481e-8ff7-4039-93ec-0a2729a154a8), got "
     "'not-a-uuid'"),
    ("{level_user_verified: hardware, attestation: direct, aaguids: [cb69481e-8ff7-4039-93ec-0a2729a154a8]}",
     "https://auth.example.com",
     "test.yaml: webauthn.attestation_roots: is required with attestation: direct (PEM files of the roots the "
     "authenticators' attestation must chain to)"),
    ("{level_user_verified: hardware, attestation: direct, aaguids: [cb69481e-8ff7-4039-93ec-0a2729a154a8], "
     "attestation_roots: [/nonexistent/roots.pem]}", "https://auth.example.com",
     "test.yaml: webauthn.attestation_roots[0]: cannot read /nonexistent/roots.pem: No such file or directory"),
    ("[hardware]", "https://auth.example.com",
     "test.yaml: webauthn: must be a mapping, got ['hardware']"),
])
def test_errors_name_file_section_and_field(section, public_url, problem):
    s, problems, _ = read(section, public_url)
    assert problem in problems
    assert s is None


def test_attestation_roots_are_read_relative_to_the_config_file(tmp_path):
    att = make_attestation(bytes(16))
    (tmp_path / "roots.pem").write_bytes(att.root_pem)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    section = """
        level_user_verified: hardware
        attestation: direct
        aaguids: [CB69481E-8FF7-4039-93EC-0A2729A154A8]
        attestation_roots: [roots.pem]
    """
    s, problems, _ = read(section, file=str(tmp_path / "forwardauth.yaml"))
    assert problems == [] and len(s.attestation_roots) == 1
    assert s.aaguids == frozenset({"cb69481e-8ff7-4039-93ec-0a2729a154a8"})
    s, problems, _ = read(section.replace("roots.pem", "junk.pem"), file=str(tmp_path / "forwardauth.yaml"))
    assert problems == [f"{tmp_path}/forwardauth.yaml: webauthn.attestation_roots[0]: {tmp_path}/junk.pem holds no "
                        "PEM certificate"]


def test_warnings():
    _, problems, warnings = read("{level_user_verified: hardware, level_presence: mfa, user_verification: required}")
    assert problems == [] and warnings == ["test.yaml: webauthn.level_presence: never given: user_verification is "
                                           "required"]
    _, problems, warnings = read("{level_user_verified: hardware, resident_keys: discouraged}")
    assert problems == [] and warnings == ["test.yaml: webauthn.passwordless: needs discoverable credentials, which "
                                           "resident_keys: discouraged does not ask for"]


def test_levels_a_proof_gives():
    s, _, _ = read("{level_user_verified: hardware, level_presence: mfa}")
    assert s.level_of(LEVELS, True).name == "hardware" and s.level_of(LEVELS, False).name == "mfa"
    assert s.level_of(LEVELS, True).acr == ("urn:acr:hwk",)  # the levels section's acr/amr come with it
    assert [s.needs_user_verification(LEVELS, t) for t in ("password", "mfa", "hardware")] == [False, False, True]
    assert [s.reaches(LEVELS, t) for t in ("password", "mfa", "hardware")] == [True, True, True]
    assert (s.register_requirement(LEVELS, False), s.register_requirement(LEVELS, True)) == ("password", "mfa")
    s, _, _ = read("{level_user_verified: mfa}")
    assert (s.register_requirement(LEVELS, False), s.register_requirement(LEVELS, True)) == ("password", "mfa")
    s, _, _ = read("{level_user_verified: hardware, register_level: mfa}")
    assert (s.register_requirement(LEVELS, False), s.register_requirement(LEVELS, True)) == ("mfa", "hardware")
    s, _, _ = read("{level_user_verified: mfa}")
    assert s.level_of(LEVELS, False) is None
    assert [s.needs_user_verification(LEVELS, t) for t in ("password", "mfa")] == [True, True]
    assert s.reaches(LEVELS, "hardware") is False


@pytest.mark.parametrize("url, origin", [
    ("https://Auth.Example.com", "https://auth.example.com"),
    ("https://auth.example.com:443/", "https://auth.example.com"),
    ("http://localhost:80", "http://localhost"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("https://[::1]:8443", "https://[::1]:8443"),
    ("https://auth.example.com/path", None),
    ("https://user@auth.example.com", None),
    ("ftp://auth.example.com", None),
    ("https://auth.example.com:99999", None),
    ("auth.example.com", None),
])
def test_origin_of(url, origin):
    assert origin_of(url) == origin


def test_the_example_section_is_valid_when_uncommented(tmp_path):
    from pathlib import Path

    from forwardauth.composition import parse_config as parse_with_parts

    text = (Path(__file__).parents[2] / "config.example.yaml").read_text()
    block = text[text.index("# webauthn:"):].split("\n\n")[0]
    lines = [re.sub(r"^# ?", "", line) for line in block.splitlines()]
    # The attestation lines are examples for `attestation: direct` (refused with the default none).
    yaml_block = "\n".join(line for line in lines if not line.lstrip().startswith(("aaguids:", "attestation_roots:")))
    cfg = parse_with_parts(BASE + "policy: {rules: []}\n" + yaml_block + "\n", str(tmp_path / "c.yaml"))
    s = cfg.sections["webauthn"]
    assert s == WebAuthnSettings(rp_id="example.com", origins=("https://auth.example.com",),
                                 level_user_verified="hardware", level_presence="mfa", register_level="password")
    assert (s.rp_name, s.user_verification, s.resident_keys, s.passwordless, s.attestation, s.max_credentials,
            s.timeout, s.register_max_age) == ("forwardauth", "preferred", "preferred", True, "none", 10, 120.0, 600.0)
    att = make_attestation(bytes(16))
    (tmp_path / "webauthn-roots.pem").write_bytes(att.root_pem)
    direct = "\n".join(line.replace("attestation: none", "attestation: direct") for line in lines)
    s = parse_with_parts(BASE + "policy: {rules: []}\n" + direct + "\n", str(tmp_path / "c.yaml")).sections["webauthn"]
    assert (s.attestation, s.aaguids, len(s.attestation_roots)) == (
        "direct", frozenset({"cb69481e-8ff7-4039-93ec-0a2729a154a8"}), 1)
