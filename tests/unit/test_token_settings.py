"""The `tokens:` config section: the commented example parses, bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardauth.core.errors import ConfigError
from forwardauth.tokens.settings import TokensSettings, settings

from .conftest import make_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_defaults_without_a_section():
    cfg = make_config("policy: {default: deny}\n")
    assert settings(cfg) == TokensSettings()
    assert settings(cfg).level_for("anyone", cfg) == "password"


def test_the_commented_example_parses():
    text = EXAMPLE.read_text()
    block = text[text.index("# tokens:"):]
    uncommented = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))
    cfg = make_config("policy: {default: deny}\n" + uncommented + "\n")
    s = settings(cfg)
    assert s.levels == {"backup": "mfa"} and s.stale_sessions_up_to == "password"
    assert s.jwt.algorithm == "ES256" and s.jwt.lifetime == 600 and s.assertion.header == "X-Auth-Request-Jwt"
    # The lines not marked "e.g." are the defaults.
    d = TokensSettings()
    assert (s.default_lifetime, s.max_lifetime, s.last_used_flush, s.index_refresh, s.stale_grace) == \
        (d.default_lifetime, d.max_lifetime, d.last_used_flush, d.index_refresh, d.stale_grace)
    assert (s.jwt.lifetime, s.jwt.audience, s.assertion) == (d.jwt.lifetime, d.jwt.audience, d.assertion)


def test_the_longest_lifetimes_are_accepted():
    s = settings(make_config("policy: {default: deny}\ntokens: {max_lifetime: 3650d, jwt: {lifetime: 1d}, "
                             "assertion: {lifetime: 1h}}\n"))
    assert (s.max_lifetime, s.jwt.lifetime, s.assertion.lifetime) == (3650 * 86400, 86400, 3600)


@pytest.mark.parametrize("section, problem", [
    ("tokens: {jwt: {algorithm: RS256}}", "tokens.jwt.algorithm: must be one of ES256, HS512, got 'RS256'"),
    ("tokens: {jwt: {algorithm: HS512}}", "tokens.jwt: algorithm HS512 needs hs512_secret_file"),
    ("tokens: {default_level: root}", "tokens.default_level: unknown level 'root'"),
    ("tokens: {levels: {svc: root}}", "tokens.levels.svc: unknown level 'root'"),
    ("tokens: {levels: [a]}", "tokens.levels: must map account names to level names"),
    ("tokens: {default_lifetime: 400d}", "tokens.default_lifetime: must not exceed tokens.max_lifetime"),
    ("tokens: {max_lifetime: 10s}", "tokens.max_lifetime: must be at least 60s"),
    ("tokens: {assertion: {header: 'X Bad'}}", "tokens.assertion.header: invalid value 'X Bad'"),
    ("tokens: {assertion: {enabled: yes please}}", "tokens.assertion.enabled: must be true or false"),
    ("tokens: {scope: all}", "tokens.scope: unknown key"),
    ("tokens: {stale_sessions_up_to: root}", "tokens.stale_sessions_up_to: unknown level 'root'"),
    ("tokens: {max_lifetime: 3651d}", "tokens.max_lifetime: duration out of range: '3651d'"),
    ("tokens: {jwt: {lifetime: 25h}}", "tokens.jwt.lifetime: must be at most 86400s"),
    ("tokens: {assertion: {lifetime: 2h}}", "tokens.assertion.lifetime: must be at most 3600s"),
])
def test_bad_values_are_named(section, problem):
    with pytest.raises(ConfigError) as exc:
        make_config("policy: {default: deny}\n" + section + "\n")
    assert any(p.startswith("test.yaml: " + problem) for p in exc.value.problems), exc.value.problems
