"""Sealing and opening sessions: round trips, rotation, and every bad cookie."""

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardauth.core.credentials import MAX_COOKIE_BYTES, SessionCodec
from forwardauth.core.keyring import Key, KeyRing, b64d, b64e, generate, rotate
from forwardauth.core.levels import Level, Levels
from forwardauth.core.sealing import Sealer
from forwardauth.core.session import Session

LEVELS = Levels((Level("password", 0), Level("mfa", 1)))
NOW = 1_800_000_000.0


def codec(ring: KeyRing, purpose: str = "session:fa") -> SessionCodec:
    return SessionCodec(Sealer(ring, purpose), LEVELS, lifetime=3600, idle_timeout=600)


def test_round_trip(ring):
    c = codec(ring)
    s = c.new("alice", "mfa", NOW, email="a@example.com", name="Alice", groups=("admins", "ops"))
    opened = c.open(c.seal(s), NOW + 1)
    assert opened.reason == "ok"
    assert opened.session == s
    assert opened.session.proofs == {"mfa": NOW}


def test_each_seal_differs_and_hides_the_content(ring):
    c = codec(ring)
    s = c.new("alice", "mfa", NOW, email="alice@example.com")
    a, b = c.seal(s), c.seal(s)
    assert a != b
    for v in (a, b):
        assert "alice" not in v and b"alice" not in b64d(v.split(".", 1)[1])


def test_rotation_keeps_old_cookies_and_seals_with_the_new_key():
    old = generate()
    new = rotate(old)
    cookie = codec(old).seal(codec(old).new("alice", "password", NOW))
    assert codec(new).open(cookie, NOW).reason == "ok"
    fresh = codec(new).seal(codec(new).new("bob", "password", NOW))
    assert fresh.startswith(new.current.id + ".")
    assert new.current.id != old.current.id


def test_removed_key_no_longer_opens():
    old = generate()
    rotated = rotate(old)
    cookie = codec(old).seal(codec(old).new("alice", "password", NOW))
    retired = KeyRing(rotated.keys[:1])
    assert codec(retired).open(cookie, NOW).reason == "unknown key"


def test_foreign_key_with_same_id_is_tampered(ring):
    other = KeyRing((Key("k1", os.urandom(32)),))
    cookie = codec(other).seal(codec(other).new("alice", "password", NOW))
    assert codec(ring).open(cookie, NOW).reason == "tampered"


def test_other_purpose_does_not_open(ring):
    cookie = codec(ring, "login-state").seal(codec(ring).new("alice", "password", NOW))
    assert codec(ring, "session:fa").open(cookie, NOW).reason == "tampered"


def _resealed(ring, payload: dict) -> str:
    return Sealer(ring, "session:fa").seal(json.dumps(payload).encode())


def _valid_payload(**over) -> dict:
    d = {"v": 1, "sid": "s", "sub": "alice", "lvl": "password", "prf": {"password": NOW}, "iat": NOW,
         "exp": NOW + 3600, "see": NOW, "src": "cli"}
    d.update(over)
    return d


@pytest.mark.parametrize("value,reason", [
    (None, "absent"),
    ("", "absent"),
    ("x" * (MAX_COOKIE_BYTES + 1), "oversized"),
    ("nodot", "malformed"),
    ("bad id!.AAAA", "malformed"),
    ("k1.not*base64", "malformed"),
    ("k1.AAAA", "truncated"),
    ("k9." + "A" * 60, "unknown key"),
])
def test_bad_cookie_shapes(ring, value, reason):
    opened = codec(ring).open(value, NOW)
    assert (opened.session, opened.reason) == (None, reason)


def test_tampered_and_truncated(ring):
    c = codec(ring)
    cookie = c.seal(c.new("alice", "password", NOW))
    kid, body = cookie.split(".")
    raw = bytearray(b64d(body))
    raw[20] ^= 1
    assert c.open(f"{kid}.{b64e(bytes(raw))}", NOW).reason == "tampered"
    assert c.open(cookie[:-4], NOW).reason == "tampered"
    assert c.open(f"{kid}.{b64e(b64d(body)[:27])}", NOW).reason == "truncated"


@pytest.mark.parametrize("payload,reason", [
    (_valid_payload(v=2), "malformed"),
    (_valid_payload(sub=7), "malformed"),
    (_valid_payload(prf=[]), "malformed"),
    (_valid_payload(iat="yesterday"), "malformed"),
    (_valid_payload(exp=True), "malformed"),
    (_valid_payload(grp="admins"), "malformed"),
    (_valid_payload(lvl="root"), "unknown level"),
    (_valid_payload(exp=NOW - 1), "expired"),
    (_valid_payload(see=NOW - 601), "idle"),
    (_valid_payload(see=NOW + 3600), "from the future"),
])
def test_well_sealed_but_invalid_content(ring, payload, reason):
    assert codec(ring).open(_resealed(ring, payload), NOW).reason == reason


def test_sealed_garbage_is_malformed(ring):
    v = Sealer(ring, "session:fa").seal(b"\xff\xfe not json")
    assert codec(ring).open(v, NOW).reason == "malformed"


def test_refresh_after_half_the_idle_window(ring):
    c = codec(ring)
    cookie = c.seal(c.new("alice", "password", NOW))
    assert c.open(cookie, NOW + 299).refresh is False
    assert c.open(cookie, NOW + 301).refresh is True
    touched = c.touched(c.open(cookie, NOW + 301).session, NOW + 301)
    assert c.open(c.seal(touched), NOW + 800).reason == "ok"
    assert c.open(cookie, NOW + 800).reason == "idle"


def test_absolute_lifetime_wins_over_refresh(ring):
    c = codec(ring)
    s = c.new("alice", "password", NOW)
    s = c.touched(s, NOW + 3599)
    assert c.open(c.seal(s), NOW + 3600).reason == "expired"


def test_freshness_counts_higher_levels():
    s = Session("s", "alice", "mfa", {"password": NOW - 1000, "mfa": NOW - 10}, NOW, NOW + 10, NOW)
    assert s.proven_since(LEVELS, "password", NOW - 60)  # mfa, proven 10 s ago, is above password
    assert not s.proven_since(LEVELS, "mfa", NOW - 5)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200)
@given(sub=text.filter(bool), email=st.one_of(st.none(), text), groups=st.lists(text, max_size=5),
       level=st.sampled_from(["password", "mfa"]))
def test_any_session_round_trips(sub, email, groups, level):
    ring = KeyRing((Key("k1", bytes(32)),))
    c = codec(ring)
    s = c.new(sub, level, NOW, email=email, groups=tuple(groups))
    assert c.open(c.seal(s), NOW).session == s


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=200), st.integers(min_value=0, max_value=199))
def test_any_bit_flip_or_garbage_is_never_a_session(garbage, pos):
    ring = KeyRing((Key("k1", bytes(32)),))
    c = codec(ring)
    cookie = c.seal(c.new("alice", "password", NOW))
    kid, body = cookie.split(".")
    raw = bytearray(b64d(body))
    raw[pos % len(raw)] ^= 0x80
    assert c.open(f"{kid}.{b64e(bytes(raw))}", NOW).session is None
    assert c.open(f"k1.{b64e(garbage)}", NOW).session is None
    assert c.open(base64.b64encode(garbage).decode(), NOW).session is None
