"""Shared builders for the core unit tests: configs from YAML text, no files."""

from __future__ import annotations

import textwrap

import pytest

from forwardauth.composition import parse_config
from forwardauth.core.keyring import Key, KeyRing

BASE = """
server:
  listen: 127.0.0.1:4180
  public_url: https://auth.example.com
  trusted_proxies: [127.0.0.1/32]
session: {cookie_name: fa, secure: false, lifetime: 1h, idle_timeout: 10m}
keys:
  inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]
state: memory://
levels:
  - {name: password, acr: ["urn:acr:pwd"], amr: [pwd]}
  - {name: mfa, acr: ["urn:acr:mfa", "urn:acr:mfa2"], amr: [otp, mfa]}
  - {name: hardware, acr: ["urn:acr:hwk"], amr: [hwk]}
"""


def make_config(policy: str, base: str = BASE):
    return parse_config(textwrap.dedent(base) + textwrap.dedent(policy), "test.yaml")


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing((Key("k1", bytes(range(32))),))
