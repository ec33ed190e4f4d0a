"""Config validation: every problem names the file, the place and the value."""

import pytest

from forwardauth.config import load_config, parse_config
from forwardauth.errors import ConfigError

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
    (("state: memory://", "state: postgres://x"), "test.yaml: state: must be sqlite:///path, memory:// or redis://..., got 'postgres://x'"),
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
