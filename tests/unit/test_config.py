"""Config validation: every problem names the file, the place and the value."""

import pytest

from forwardauth.composition import load_config, parse_config
from forwardauth.core.errors import ConfigError

from .conftest import BASE, make_config


def problems(policy: str, base: str = BASE) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        make_config(policy, base)
    return exc.value.problems


@pytest.mark.parametrize("rules,expected", [
    ("- {level: root}", "test.yaml: policy.rules[0].level: unknown level 'root' (levels: password, mfa, hardware)"),
    ("- {level: mfa, max_age: soon}", "test.yaml: policy.rules[0].max_age: not a duration: 'soon' (use e.g. 90s, 15m, 12h, 30d)"),
    ("- {allow: everyone}", "test.yaml: policy.rules[0].allow: the only allowed value is anonymous, got 'everyone'"),
    ("- {deny: yes please}", "test.yaml: policy.rules[0].deny: must be true, got 'yes please'"),
    ("- {level: mfa, maxage: 5m}", "test.yaml: policy.rules[0].maxage: unknown key"),
    ("- {hosts: ['bad host'], level: mfa}", "test.yaml: policy.rules[0].hosts[0]: must be a host name or *.domain, got 'bad host'"),
    ("- {paths: [admin], level: mfa}", "test.yaml: policy.rules[0].paths[0]: path pattern must start with '/' or 're:', got 'admin'"),
    ("- {methods: [FETCH], level: mfa}", "test.yaml: policy.rules[0].methods[0]: unknown HTTP method 'FETCH'"),
    ("- {networks: [10.0.0.0/33], level: mfa}", "test.yaml: policy.rules[0].networks[0]: not an IP network (CIDR): '10.0.0.0/33'"),
    ("- {level: mfa, deny: true}", "test.yaml: policy.rules[0]: must say exactly one of `allow: anonymous`, `deny: true`, `level: NAME`, `methods_levels` (has deny, level)"),
    ("- {paths: [/x]}", "test.yaml: policy.rules[0]: must say exactly one of `allow: anonymous`, `deny: true`, `level: NAME`, `methods_levels`"),
    ("- {allow: anonymous, groups: [a]}", "test.yaml: policy.rules[0].groups: only applies to rules with a level (this rule says anonymous)"),
    ("- {methods_levels: {GET: password, POST: root}}", "test.yaml: policy.rules[0].methods_levels.POST: unknown level 'root'"),
])
def test_rule_errors_name_rule_and_field(rules, expected):
    text = "policy:\n  rules:\n    - {level: password}\n    " + rules.replace("[0]", "[1]")
    expected = expected.replace("rules[0]", "rules[1]")
    got = problems(text)
    assert any(p.startswith(expected) for p in got), got


def test_named_rule_is_named_in_errors():
    got = problems("policy:\n  rules:\n    - {name: admin, level: boss}\n")
    assert got == ["test.yaml: policy.rules[0] (admin).level: unknown level 'boss' (levels: password, mfa, hardware)"]


def test_all_problems_are_reported_together():
    got = problems("policy:\n  default: maybe\n  rules:\n    - {level: boss}\n    - {level: mfa, max_age: x}\n")
    assert len(got) == 3


@pytest.mark.parametrize("base_change,expected", [
    (("cookie_name: fa, secure: false", "cookie_name: __Host-fa, secure: false"),
     "test.yaml: session.cookie_name: a __Host- cookie needs secure: true and no domain"),
    (("listen: 127.0.0.1:4180", "listen: nowhere"), "test.yaml: server.listen: must be HOST:PORT, got 'nowhere'"),
    (("state: memory://", "state: postgres://x"), "test.yaml: state: must be sqlite:///path, memory://, redis://... or redis+sentinel://..., got 'postgres://x'"),
    (("trusted_proxies: [127.0.0.1/32]", "trusted_proxies: [localhost]"),
     "test.yaml: server.trusted_proxies[0]: not an IP network (CIDR): 'localhost'"),
    (("public_url: https://auth.example.com", "public_url: https://auth.example.com/x?y"),
     "test.yaml: server.public_url: must be an http(s) URL with no path, query or userinfo"),
    (("- {name: hardware, acr: [\"urn:acr:hwk\"], amr: [hwk]}", "- {name: password, acr: [\"urn:acr:hwk\"]}"),
     "test.yaml: levels[2].name: duplicate level 'password'"),
    (("lifetime: 1h", "lifetime: forever"), "test.yaml: session.lifetime: not a duration: 'forever'"),
])
def test_section_errors(base_change, expected):
    old, new = base_change
    assert old in BASE
    got = problems("policy: {rules: []}\n", BASE.replace(old, new))
    assert any(p.startswith(expected) for p in got), got


def test_unknown_top_level_key():
    got = problems("polcy: {}\n")
    assert got[0].startswith("test.yaml: polcy: unknown key")


def test_invalid_yaml_names_line():
    with pytest.raises(ConfigError) as exc:
        parse_config("a: [1, 2\nb: 3\n", "bad.yaml")
    assert exc.value.problems[0].startswith("bad.yaml: line ")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert exc.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]


def test_valid_config_is_frozen():
    cfg = make_config("policy: {rules: [{level: mfa, max_age: 15m}]}")
    assert cfg.policy.rules[0].max_age == 900
    with pytest.raises(AttributeError):
        cfg.policy.rules[0].level = "password"  # type: ignore[misc]


def test_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "config.example.yaml")
    assert cfg.levels.names[:2] == ("password", "mfa")


def test_example_oidc_section_is_valid_when_uncommented():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "config.example.yaml").read_text()
    block = text[text.index("# oidc:"):].split("\n\n")[0]
    yaml_block = "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines())
    yaml_block = re.sub(r"client_secret_file: \S+", "client_secret: s3cret", yaml_block)
    cfg = make_config("policy: {rules: []}\n" + yaml_block + "\n")
    oidc = cfg.sections["oidc"]
    assert (oidc.issuer, oidc.client_id, oidc.essential_acr, oidc.login_timeout) == (
        "https://idp.example.com", "forwardauth", True, 600)
    assert "s3cret" not in repr(oidc)


# Values of the wrong type, bad globs, empty rules: one clear line each, never a traceback.
@pytest.mark.parametrize("rules,expected", [
    ("- {level: [mfa]}", "test.yaml: policy.rules[1].level: must be one level name (levels: password, mfa, hardware), "
                         "got ['mfa']"),
    ("- {level: {a: 1}}", "test.yaml: policy.rules[1].level: must be one level name (levels: password, mfa, hardware), "
                          "got {'a': 1}"),
    ("- {methods_levels: {GET: [mfa]}}", "test.yaml: policy.rules[1].methods_levels.GET: must be one level name, "
                                         "got ['mfa']"),
    ("- {methods_levels: {GET: {a: 1}}}", "test.yaml: policy.rules[1].methods_levels.GET: must be one level name, "
                                          "got {'a': 1}"),
    ("- {paths: ['/x[z-a]'], level: mfa}", "test.yaml: policy.rules[1].paths[0]: invalid glob '/x[z-a]': "
                                           "bad character range z-a"),
    ("- {paths: ['/a[]'], level: mfa}", "test.yaml: policy.rules[1].paths[0]: invalid glob '/a[]': "
                                        "unterminated character set"),
    ("- {level: mfa, max_age: .nan}", "test.yaml: policy.rules[1].max_age: duration out of range: nan"),
    ("- {level: mfa, max_age: .inf}", "test.yaml: policy.rules[1].max_age: duration out of range: inf"),
    ("- {level: mfa, max_age: -.inf}", "test.yaml: policy.rules[1].max_age: duration out of range: -inf"),
])
def test_wrong_types_are_config_errors(rules, expected):
    got = problems("policy:\n  rules:\n    - {level: password}\n    " + rules + "\n")
    assert got == [expected]


@pytest.mark.parametrize("entry", ["-", "- null", "- ~"])
def test_empty_rule_is_an_error_naming_its_index(entry):
    """Silently dropping it would move every later rule up one place in first-match order."""
    got = problems(f"policy:\n  rules:\n    - {{level: password}}\n    {entry}\n    - {{deny: true}}\n")
    assert got == ["test.yaml: policy.rules[1]: empty rule (a `-` with nothing after it)"]


@pytest.mark.parametrize("field", ["lifetime", "idle_timeout"])
@pytest.mark.parametrize("value", [".nan", ".inf", ".NaN"])
def test_non_finite_session_durations_are_refused(field, value):
    """A NaN lifetime or idle timeout compares false with every time: sessions would never expire."""
    old = {"lifetime": "lifetime: 1h", "idle_timeout": "idle_timeout: 10m"}[field]
    assert old in BASE
    got = problems("policy: {rules: []}\n", BASE.replace(old, f"{field}: {value}"))
    assert f"test.yaml: session.{field}: duration out of range: {float(value.lower().lstrip('.'))!r}" in got, got


def test_non_finite_refresh_interval_is_refused():
    got = problems("revocation: {refresh_interval: .nan}\npolicy: {rules: []}\n")
    assert got == ["test.yaml: revocation.refresh_interval: duration out of range: nan"]


@pytest.mark.parametrize("value", ["0", "0s", "10ms"])
def test_zero_refresh_interval_is_refused(value):
    got = problems(f"revocation: {{refresh_interval: {value}}}\npolicy: {{rules: []}}\n")
    assert got == [f"test.yaml: revocation.refresh_interval: must be at least 50ms, got {value!r}"
                   .replace("'0'", "0")]


def test_idle_timeout_longer_than_lifetime_is_refused():
    got = problems("policy: {rules: []}\n", BASE.replace("lifetime: 1h, idle_timeout: 10m",
                                                         "lifetime: 1h, idle_timeout: 2h"))
    assert got == ["test.yaml: session.idle_timeout: must not be longer than session.lifetime (1h), got 2h"]


@pytest.mark.parametrize("field,value,shown", [
    ("acr", '["urn:a b"]', "'urn:a b'"),
    ("acr", "['urn:\"x']", "'urn:\"x'"),
    ("acr", '["urn:x\\r\\nX-Evil: 1"]', "'urn:x\\r\\nX-Evil: 1'"),
    ("acr", '["a\\\\b"]', "'a\\\\b'"),
    ("amr", '["otp", "caf\\u00e9"]', "'café'"),
])
def test_acr_and_amr_values_are_token_characters(field, value, shown):
    """They go into the quoted acr_values of WWW-Authenticate: a quote or CR/LF would break the header."""
    base = BASE.replace('- {name: hardware, acr: ["urn:acr:hwk"], amr: [hwk]}',
                        f'- {{name: hardware, {field}: {value}}}')
    got = problems("policy: {rules: []}\n", base)
    index = 1 if field == "amr" and "otp" in value else 0
    assert got == [f"test.yaml: levels[2] (hardware).{field}[{index}]: must be 1-256 printable ASCII characters "
                   f"without spaces, quotes or backslashes, got {shown}"]


def test_uri_acr_values_are_accepted():
    base = BASE.replace('acr: ["urn:acr:hwk"]', 'acr: ["http://schemas.openid.net/pape/policies/2007/06/multi-factor"]')
    assert make_config("policy: {rules: []}\n", base).levels["hardware"].acr == (
        "http://schemas.openid.net/pape/policies/2007/06/multi-factor",)
