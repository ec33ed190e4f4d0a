"""The `local:` config section: defaults, every option, and each error with its place."""

import re
from pathlib import Path

import pytest

from forwardauth.core.errors import ConfigError
from forwardauth.services.passwords import ScryptParams
from forwardauth.services.regulation import RegulationConfig
from forwardauth.signin.settings import BootstrapAdmin, LocalSettings, settings, totp_levels

from .conftest import BASE, make_config

LEVELS_TOTP = BASE.replace('  - {name: mfa, acr: ["urn:acr:mfa", "urn:acr:mfa2"], amr: [otp, mfa]}',
                           '  - {name: mfa, acr: ["urn:acr:mfa", "urn:acr:mfa2"], amr: [otp, mfa], local_factor: totp}')


def test_absent_section_means_password_sign_in_off():
    cfg = make_config("policy: {rules: []}\n")
    s = settings(cfg)
    assert s == LocalSettings() and s.enabled is False and s.audit == "stdout"
    assert s.password_level_of(cfg.levels).name == "password"


def test_empty_section_turns_it_on_with_defaults():
    s = settings(make_config("local: {}\npolicy: {rules: []}\n"))
    assert s.enabled is True
    assert (s.scrypt, s.regulation, s.totp.issuer, s.bootstrap_admin) == (
        ScryptParams(15, 8, 1), RegulationConfig(5, 20, 600.0, 900.0), "forwardauth", None)


def test_example_local_section_is_valid_when_uncommented():
    text = (Path(__file__).parents[2] / "config.example.yaml").read_text()
    block = text[text.index("# local:"):].split("\n\n")[0]
    yaml_block = "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines())
    cfg = make_config("policy: {rules: []}\n" + yaml_block + "\n", LEVELS_TOTP)
    s = settings(cfg)
    assert s == LocalSettings(True, "password", 10, ScryptParams(15, 8, 1), s.totp,
                              RegulationConfig(5, 20, 600.0, 900.0), "stdout", BootstrapAdmin("admin", ("admins",)))
    assert (s.totp.issuer, s.totp.self_enrolment) == ("forwardauth", True)
    assert [lv.name for lv in totp_levels(cfg.levels)] == ["mfa"]


def test_example_levels_use_totp_for_mfa():
    from forwardauth.composition import load_config

    cfg = load_config(Path(__file__).parents[2] / "config.example.yaml")
    assert [lv.name for lv in totp_levels(cfg.levels)] == ["mfa"]


def test_embedded_default_is_a_working_local_sidecar(tmp_path):
    from forwardauth.composition import parse_config
    from forwardauth.core.defaults import embedded_default

    cfg = embedded_default(tmp_path / "var", parse_config)
    s = settings(cfg)
    assert s.enabled and s.bootstrap_admin == BootstrapAdmin("admin", ("admins",))
    assert [lv.name for lv in totp_levels(cfg.levels)] == ["mfa"]
    assert (tmp_path / "var" / "keys.json").exists()


@pytest.mark.parametrize("section, problem", [
    ("local: {password_level: gold}",
     "test.yaml: local.password_level: unknown level 'gold' (levels: password, mfa, hardware)"),
    ("local: {enabled: yes please}", "test.yaml: local.enabled: must be true or false, got 'yes please'"),
    ("local: {min_password_length: 4}", "test.yaml: local.min_password_length: must be an integer from 8 to 256, got 4"),
    ("local: {scrypt: {log_n: 30}}", "test.yaml: local.scrypt.log_n: must be an integer from 10 to 22, got 30"),
    ("local: {scrypt: {n: 5}}", "test.yaml: local.scrypt.n: unknown key (allowed: log_n, p, r)"),
    ("local: {totp: {issuer: 'a:b'}}", "test.yaml: local.totp.issuer: invalid value 'a:b'"),
    ("local: {regulation: {window: soon}}", "test.yaml: local.regulation.window: not a duration: 'soon' (use e.g. 90s, 15m, 12h, 30d)"),
    ("local: {regulation: {max_failures: 0}}",
     "test.yaml: local.regulation.max_failures: must be an integer from 1 to 1000, got 0"),
    ("local: {bootstrap_admin: {username: 'Bad Name'}}",
     "test.yaml: local.bootstrap_admin.username: not a valid username: 'Bad Name'"),
    ("local: {passwords: x}", "test.yaml: local.passwords: unknown key (allowed: audit, bootstrap_admin, enabled, "
                              "min_password_length, password_level, regulation, scrypt, totp)"),
])
def test_errors_name_the_place(section, problem):
    with pytest.raises(ConfigError) as exc:
        make_config(section + "\npolicy: {rules: []}\n")
    assert problem in exc.value.problems, exc.value.problems


def test_unknown_local_factor_and_a_totp_level_at_the_password_level():
    base = BASE.replace("amr: [hwk]}", "amr: [hwk], local_factor: webauthn}")
    with pytest.raises(ConfigError) as exc:
        make_config("local: {}\npolicy: {rules: []}\n", base)
    assert exc.value.problems == [
        "test.yaml: levels[2] (hardware).local_factor: unknown local factor 'webauthn' (known: totp)"]
    base = BASE.replace("amr: [pwd]}", "amr: [pwd], local_factor: totp}")
    with pytest.raises(ConfigError) as exc:
        make_config("local: {}\npolicy: {rules: []}\n", base)
    assert exc.value.problems == [
        "test.yaml: levels (password).local_factor: a TOTP level must be above the password level 'password'"]
