"""A large config's YAML value kept between runs (services/configcache.py).

What must hold: a kept value answers only for the same bytes, is validated
as fully as YAML's, is read only when this user alone could have written it,
and is only ever a shortcut (anything wrong with it: the YAML is read).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from forwardauth.core.errors import ConfigError
from forwardauth.services import configcache

from .conftest import BASE

RULES = "".join(f"    - {{hosts: [app{i}.example.com], level: password}}\n" for i in range(40))
TEXT = textwrap.dedent(BASE) + "policy:\n  default: deny\n  rules:\n" + RULES


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Every file counts as large; the cache in tmp_path/cache; YAML reads counted."""
    where = tmp_path / "cache"
    monkeypatch.setenv("FORWARDAUTH_CACHE_DIR", str(where))
    monkeypatch.setattr(configcache, "LARGE_CONFIG", 0)
    reads = []
    real = configcache.read_yaml

    def counting(text, file="<config>"):
        reads.append(file)
        return real(text, file)

    monkeypatch.setattr(configcache, "read_yaml", counting)
    return where, reads


def write(tmp_path, text=TEXT, name="forwardauth.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def kept(where):
    return sorted(where.glob("*.json"))


def test_the_second_load_reads_no_yaml_and_gives_the_same_config(tmp_path, cache):
    where, reads = cache
    p = write(tmp_path)
    first = configcache.load_config(p)
    assert reads == [str(p)] and len(kept(where)) == 1
    second = configcache.load_config(p)
    assert reads == [str(p)]  # not read again
    assert second.policy.rules == first.policy.rules and len(second.policy.rules) == 40
    assert second.levels == first.levels and second.server == first.server
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(kept(where)[0]).st_mode) == 0o600


def test_an_edit_is_another_key(tmp_path, cache):
    where, reads = cache
    p = write(tmp_path)
    configcache.load_config(p)
    p.write_text(TEXT.replace("app0.example.com", "app0.example.org"))
    cfg = configcache.load_config(p)
    assert len(reads) == 2 and len(kept(where)) == 2
    assert cfg.policy.rules[0].hosts == ("app0.example.org",)


def test_a_kept_value_is_validated_like_yaml(tmp_path, cache):
    """The kept value is only a faster way to the same value: a value validation refuses is refused,
    with the file, rule and field named."""
    where, _ = cache
    p = write(tmp_path)
    configcache.load_config(p)
    f = kept(where)[0]
    value = json.loads(f.read_text())
    value["policy"]["rules"][3]["level"] = "root"
    f.write_text(json.dumps(value))
    with pytest.raises(ConfigError) as e:
        configcache.load_config(p)
    assert e.value.problems == [f"{p}: policy.rules[3].level: unknown level 'root' (levels: password, mfa, hardware)"]


@pytest.mark.parametrize("spoil", ["group-writable file", "world-writable file", "group-writable dir", "symlink",
                                   "torn"])
def test_a_kept_value_that_is_not_trusted_or_whole_is_ignored(tmp_path, cache, spoil):
    where, reads = cache
    p = write(tmp_path)
    configcache.load_config(p)
    f = kept(where)[0]
    value = json.loads(f.read_text())
    value["policy"]["rules"][0]["hosts"] = ["evil.example.com"]  # what a forged file would say
    if spoil == "group-writable file":
        f.write_text(json.dumps(value))
        f.chmod(0o620)
    elif spoil == "world-writable file":
        f.write_text(json.dumps(value))
        f.chmod(0o602)
    elif spoil == "group-writable dir":
        f.write_text(json.dumps(value))
        where.chmod(0o770)
    elif spoil == "symlink":
        other = tmp_path / "elsewhere.json"
        other.write_text(json.dumps(value))
        other.chmod(0o600)
        f.unlink()
        f.symlink_to(other)
    else:
        f.write_text(json.dumps(value)[:100])
    cfg = configcache.load_config(p)
    assert cfg.policy.rules[0].hosts == ("app0.example.com",)  # the file's, not the kept value's
    assert len(reads) == 2


def test_a_value_json_cannot_hold_is_not_kept(tmp_path, cache):
    """A YAML date (a rule's name may be anything) comes back from JSON as a string: not kept."""
    where, reads = cache
    p = write(tmp_path, TEXT.replace("- {hosts: [app0.example.com]", "- {name: 2026-11-30, hosts: [app0.example.com]"))
    configcache.load_config(p)
    configcache.load_config(p)
    assert kept(where) == [] and len(reads) == 2


def test_an_invalid_config_is_not_kept(tmp_path, cache):
    where, _ = cache
    p = write(tmp_path, TEXT.replace("level: password}", "level: nope}", 1))
    with pytest.raises(ConfigError):
        configcache.load_config(p)
    assert kept(where) == []


def test_at_most_keep_values_the_least_recently_used_removed(tmp_path, cache):
    where, _ = cache
    paths = [write(tmp_path, TEXT.replace("app0.", f"v{i}."), f"c{i}.yaml") for i in range(configcache.KEEP + 2)]
    for i, p in enumerate(paths):
        configcache.load_config(p)
        f = where / (configcache.key(p.read_bytes()) + ".json")
        if f.exists():
            os.utime(f, (1000 + i, 1000 + i))  # the order they were used in, whatever the clock's resolution
    assert len(kept(where)) == configcache.KEEP
    names = {configcache.key(p.read_bytes()) + ".json" for p in paths[-configcache.KEEP:]}
    assert {f.name for f in kept(where)} == names


def test_a_small_file_or_the_cache_turned_off_keeps_nothing(tmp_path, cache, monkeypatch):
    where, reads = cache
    p = write(tmp_path)
    monkeypatch.setattr(configcache, "LARGE_CONFIG", len(TEXT) + 1)
    configcache.load_config(p)
    assert not where.exists()
    monkeypatch.setattr(configcache, "LARGE_CONFIG", 0)
    monkeypatch.setenv("FORWARDAUTH_CACHE_DIR", "")
    configcache.load_config(p)
    assert not where.exists() and len(reads) == 2


def test_the_default_place_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FORWARDAUTH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert configcache.cache_dir() == tmp_path / "xdg" / "forwardauth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert configcache.cache_dir() == tmp_path / ".cache" / "forwardauth"
    monkeypatch.delenv("HOME")
    assert configcache.cache_dir() is None


def test_the_key_covers_the_bytes_and_the_readers_versions(monkeypatch):
    k = configcache.key(b"a")
    assert k != configcache.key(b"b") and len(k) == 64
    monkeypatch.setattr(configcache, "FORMAT", configcache.FORMAT + 1)
    assert configcache.key(b"a") != k


def test_errors_reading_the_file_are_the_cores(tmp_path, cache):
    with pytest.raises(ConfigError) as e:
        configcache.load_config(tmp_path / "missing.yaml")
    assert e.value.problems == [f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"server: \xff\n")
    with pytest.raises(ConfigError) as e:
        configcache.load_config(bad)
    assert e.value.problems == [f"{bad}: not UTF-8 text (byte 8)"]


def test_check_then_explain_use_the_kept_value_of_a_large_file(tmp_path):
    """End to end through the CLI, with a real 256 KB+ file: `check` keeps the value and `explain`
    uses it (shown by changing the kept value, which only this user could do)."""
    rules = "".join(f"    - {{hosts: [app{i}.example.com], paths: [/x/{i}/], level: password}}\n"
                    for i in range(5000))
    p = write(tmp_path, textwrap.dedent(BASE) + "policy:\n  default: deny\n  rules:\n" + rules)
    assert p.stat().st_size >= configcache.LARGE_CONFIG
    env = {**os.environ, "FORWARDAUTH_CACHE_DIR": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "forwardauth"]
    out = subprocess.run([*run, "check", "-c", str(p)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"{p}: ok (3 levels, 5000 rules, default deny)"
    (f,) = kept(tmp_path / "cache")
    value = json.loads(f.read_text())
    value["policy"]["rules"][7]["level"] = "mfa"
    f.write_text(json.dumps(value))
    out = subprocess.run([*run, "explain", "-c", str(p), "--url", "https://app7.example.com/x/7/"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "rules[7]" in out.stdout and "mfa" in out.stdout, out.stdout + out.stderr
