"""Macaroon construction, attenuation, parsing and the bearer principal."""

from __future__ import annotations

import base64
import struct

import pytest

from forwardauth.core.credentials import Source, Status
from forwardauth.core.keyring import Key, KeyRing, b64d, b64e
from forwardauth.core.levels import Level, Levels
from forwardauth.core.request import AmbiguousPath, build
from forwardauth.state.records import RevocationSnapshot, TokenMeta
from forwardauth.state.revocations import FAR_FUTURE, Revocations
from forwardauth.tokens import caveats as cv
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens.bearer import TokenVerifier, bearer_token, principal
from forwardauth.tokens.index import Principal, TokenIndex

TID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NOW = 1_700_000_000.0
LEVELS = Levels((Level("password", 0), Level("mfa", 1), Level("hardware", 2)))


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing((Key("k1", bytes(range(32))),))


def base_caveats(account: str = "svc", level: str = "mfa", issued: float = NOW, expires: float = NOW + 3600):
    return [f"account={account}", f"level={level}", f"issued={cv.format_time(issued)}",
            f"expires={cv.format_time(expires)}"]


def test_round_trip_and_verify(ring):
    m = mac.mint(ring, TID, base_caveats())
    text = m.serialize()
    assert text.startswith("fa1_")
    back = mac.deserialize(text)
    assert back == m
    assert back.key_id == "k1" and back.token_id == TID
    mac.verify_signature(ring, back)


def test_construction_is_the_hmac_chain(ring):
    """sig0 = HMAC(root, identifier), sig_i = HMAC(sig_{i-1}, caveat_i): checked with the stdlib's HMAC."""
    import hashlib
    import hmac

    m = mac.mint(ring, TID, ["account=a", "level=mfa"])
    root = hmac.new(ring.derive("k1", "macaroon"), b"token:" + TID.encode(), hashlib.sha256).digest()
    sig = hmac.new(root, f"v1:k1:{TID}".encode(), hashlib.sha256).digest()
    for c in ("account=a", "level=mfa"):
        sig = hmac.new(sig, c.encode(), hashlib.sha256).digest()
    assert m.signature == sig


def test_attenuation_needs_no_key_and_verifies(ring):
    m = mac.mint(ring, TID, base_caveats())
    holder = mac.deserialize(m.serialize())  # the holder has only the token
    narrower = holder.add_caveat("method=GET").add_caveat("path=/api/read")
    mac.verify_signature(ring, mac.deserialize(narrower.serialize()))
    assert narrower.caveats[-2:] == ("method=GET", "path=/api/read")


def test_removing_a_caveat_breaks_the_signature(ring):
    narrower = mac.mint(ring, TID, base_caveats()).add_caveat("method=GET")
    widened = mac.Macaroon(narrower.identifier, narrower.caveats[:-1], narrower.signature)
    with pytest.raises(mac.TokenError, match="^bad signature$"):
        mac.verify_signature(ring, widened)


def test_reordering_caveats_breaks_the_signature(ring):
    m = mac.mint(ring, TID, base_caveats()).add_caveat("method=GET").add_caveat("path=/a")
    swapped = mac.Macaroon(m.identifier, m.caveats[:-2] + (m.caveats[-1], m.caveats[-2]), m.signature)
    with pytest.raises(mac.TokenError, match="^bad signature$"):
        mac.verify_signature(ring, swapped)


def test_editing_a_caveat_or_the_identifier_breaks_the_signature(ring):
    m = mac.mint(ring, TID, base_caveats())
    edited = mac.Macaroon(m.identifier, ("account=admin",) + m.caveats[1:], m.signature)
    with pytest.raises(mac.TokenError, match="^bad signature$"):
        mac.verify_signature(ring, edited)
    other = mac.make_identifier("k1", "11111111-2222-3333-4444-555555555555")
    with pytest.raises(mac.TokenError, match="^bad signature$"):
        mac.verify_signature(ring, mac.Macaroon(other, m.caveats, m.signature))


def test_another_ring_does_not_verify(ring):
    m = mac.mint(ring, TID, base_caveats())
    other = KeyRing((Key("k1", bytes(32)),))
    with pytest.raises(mac.TokenError, match="^bad signature$"):
        mac.verify_signature(other, m)


def test_rotation_keeps_old_tokens_until_their_key_leaves(ring):
    old = mac.mint(ring, TID, base_caveats())
    rotated = KeyRing((Key("k2", bytes(range(1, 33))),) + ring.keys)
    new = mac.mint(rotated, TID, base_caveats())
    assert new.key_id == "k2"  # the newest key mints
    mac.verify_signature(rotated, old)  # the old key still verifies
    rotated_out = KeyRing((Key("k2", bytes(range(1, 33))),))
    with pytest.raises(mac.TokenError, match="^unknown key$"):
        mac.verify_signature(rotated_out, old)


def _raw(m: mac.Macaroon) -> bytes:
    return b64d(m.serialize()[4:])


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda raw: "xx1_" + b64e(raw), "not a forwardauth token"),
        (lambda raw: "fa1_" + b64e(raw) + "!", "malformed token"),
        (lambda raw: "fa1_" + b64e(raw[:20]), "truncated token"),
        (lambda raw: "fa1_" + b64e(raw[:-1]), "truncated token"),
        (lambda raw: "fa1_" + b64e(raw + b"\x00"), "malformed token"),
        (lambda raw: "fa1_" + b64e(b"\x02" + raw[1:]), "unsupported token version"),
        (lambda raw: "fa1_" + "A" * 5000, "oversized token"),
        (lambda raw: "fa1_", "truncated token"),
        (lambda raw: "fa1_" + b64e(b"\x01" + struct.pack(">H", 3) + b"abc" + b"\x00" + bytes(32)),
         "malformed identifier"),
    ],
)
def test_malformed_tokens_are_refused_with_the_reason(ring, mangle, message):
    raw = _raw(mac.mint(ring, TID, base_caveats()))
    with pytest.raises(mac.TokenError) as exc:
        mac.deserialize(mangle(raw))
    assert str(exc.value) == message


def test_too_many_caveats_and_bad_caveat_text(ring):
    m = mac.mint(ring, TID, base_caveats())
    with pytest.raises(mac.TokenError, match="^caveat contains control characters$"):
        m.add_caveat("path=/a\n")
    with pytest.raises(mac.TokenError, match="^empty caveat$"):
        m.add_caveat("")
    for _ in range(mac.MAX_CAVEATS - len(m.caveats)):
        m = m.add_caveat("method=GET")
    with pytest.raises(mac.TokenError, match="^too many caveats"):
        m.add_caveat("method=GET")


# --- caveats -------------------------------------------------------------------


def claims(*extra: str, **kw) -> cv.Claims:
    return cv.parse(base_caveats(**kw) + list(extra))


def check(c: cv.Claims, *, now=NOW + 1, host="api.example.com", path="/api/read/x", method="GET"):
    c.check(now=now, host=host, path=path, method=method)


@pytest.mark.parametrize(
    "caveat, ok, bad, message",
    [
        ("host=api.example.com", {"host": "api.example.com"}, {"host": "evil.example.com"},
         "host not allowed by token"),
        ("path=/api/read", {"path": "/api/read/x"}, {"path": "/api/readwrite"}, "path not allowed by token"),
        ("path=/api/read", {"path": "/api/read"}, {"path": "/api"}, "path not allowed by token"),
        ("method=GET,HEAD", {"method": "HEAD"}, {"method": "POST"}, "method not allowed by token"),
        (f"expires={int(NOW + 10)}", {"now": NOW + 9}, {"now": NOW + 10}, "expired"),
    ],
)
def test_each_caveat_both_ways(caveat, ok, bad, message):
    c = claims(caveat)
    check(c, **ok)
    with pytest.raises(cv.CaveatError) as exc:
        check(c, **bad)
    assert str(exc.value) == message


def test_expired_token():
    with pytest.raises(cv.CaveatError, match="^expired$"):
        check(claims(expires=NOW), now=NOW)


def test_issued_in_the_future_is_refused():
    with pytest.raises(cv.CaveatError, match="^issued in the future$"):
        check(claims(issued=NOW + 3600), now=NOW)


@pytest.mark.parametrize(
    "caveat, message",
    [
        ("scope=admin", "unknown caveat"),
        ("Account=svc", "unknown caveat"),
        ("account", "malformed caveat"),
        ("account=two words", "malformed account caveat"),
        ("expires=tomorrow", "malformed time"),
        ("expires=-1", "malformed time"),
        ("issued=1e9", "malformed time"),
        ("method=GET,FOO", "malformed method caveat"),
        ("method=get", "malformed method caveat"),
        ("method=", "malformed method caveat"),
        ("path=api", "malformed path caveat"),
        ("path=/a/../b", "malformed path caveat"),
        ("path=/a//b", "malformed path caveat"),
        ("host=API.example.com", "malformed host caveat"),
        ("host=*.example.com", "malformed host caveat"),
        ("level=", "malformed level caveat"),
        ("account=other", "conflicting account caveats"),
    ],
)
def test_unknown_or_malformed_caveats_deny(caveat, message):
    with pytest.raises(cv.CaveatError) as exc:
        claims(caveat)
    assert str(exc.value) == message


@pytest.mark.parametrize("missing, message", [(0, "no account caveat"), (1, "no level caveat"),
                                              (2, "no issued caveat"), (3, "no expires caveat")])
def test_required_caveats(missing, message):
    cav = base_caveats()
    del cav[missing]
    with pytest.raises(cv.CaveatError) as exc:
        cv.parse(cav)
    assert str(exc.value) == message


def test_appended_caveats_only_narrow():
    c = claims("level=password", f"issued={cv.format_time(NOW + 999)}", f"expires={cv.format_time(NOW + 7200)}")
    assert c.level(LEVELS) == "password"  # the lowest level wins
    assert c.issued == NOW  # a later `issued` cannot dodge an epoch
    assert c.expires == NOW + 3600  # a later `expires` cannot extend
    assert claims("level=hardware").level(LEVELS) == "mfa"


def test_unknown_level_denies():
    with pytest.raises(cv.CaveatError, match="^unknown level$"):
        claims("level=root").level(LEVELS)


# --- the bearer principal ---------------------------------------------------------


def original(method="GET", path="/api/read/x", host="api.example.com"):
    return build(method=method, scheme="https", host=host, uri=path, forwarded_for=None, peer=None, trusted=(),
                 accept="*/*")


@pytest.fixture
def world(ring):
    index = TokenIndex()
    index.tokens = {TID: TokenMeta(TID, "svc", "ci", "k1", "mfa", NOW, NOW + 3600, "root")}
    index.accounts = {"svc": Principal("svc", "system", "svc@example.com", None, ("deploy",))}
    return ring, index, Revocations()


def run(world, token: str, now=NOW + 1, **req):
    """(session, what the logs say: "ok" or "token: why"), the credential's type checked."""
    ring, index, rev = world
    found = principal(TokenVerifier(ring), token, original(**req), index, rev, LEVELS, now)
    assert found.source is Source.TOKEN
    assert found.status is (Status.VALID if found.session is not None else Status.REFUSED)
    return found.session, found.label


def test_principal_is_a_token_session(world):
    token = mac.mint(world[0], TID, base_caveats()).serialize()
    s, why = run(world, token)
    assert why == "ok"
    assert (s.sub, s.sid, s.level, s.source, s.groups, s.email) == ("svc", TID, "mfa", "token", ("deploy",),
                                                                  "svc@example.com")
    assert s.iat == NOW and s.exp == NOW + 3600


def test_epoch_revocation(world):
    token = mac.mint(world[0], TID, base_caveats()).serialize()
    world[2].snapshot = RevocationSnapshot(1, {"svc": NOW + 0.5})
    assert run(world, token) == (None, "token: revoked")
    world[2].snapshot = RevocationSnapshot(2, {"svc": NOW - 1})
    assert run(world, token)[1] == "ok"
    world[2].snapshot = RevocationSnapshot(3, {"svc": FAR_FUTURE})  # locked
    assert run(world, token) == (None, "token: revoked")


def test_token_id_revocation(world):
    token = mac.mint(world[0], TID, base_caveats()).serialize()
    world[2].snapshot = RevocationSnapshot(1, {}, {TID: NOW + 3600})
    assert run(world, token) == (None, "token: revoked")


def test_unknown_token_record_and_locked_account(world):
    token = mac.mint(world[0], TID, base_caveats()).serialize()
    world[1].accounts = {"svc": Principal("svc", "system", active=False)}
    assert run(world, token) == (None, "token: account missing or locked")
    world[1].tokens = {}
    assert run(world, token) == (None, "token: unknown or revoked")


def test_record_mismatch_is_refused(world):
    token = mac.mint(world[0], TID, base_caveats(account="other")).serialize()
    assert run(world, token) == (None, "token: does not match its record")


def test_level_never_exceeds_the_record(world):
    world[1].tokens[TID] = TokenMeta(TID, "svc", "ci", "k1", "password", NOW, NOW + 3600, "root")
    token = mac.mint(world[0], TID, base_caveats(level="hardware")).serialize()
    assert run(world, token)[0].level == "password"


def test_attenuated_token_through_the_principal(world):
    token = mac.deserialize(mac.mint(world[0], TID, base_caveats()).serialize())
    narrow = token.add_caveat("method=GET").add_caveat("path=/api/read").serialize()
    assert run(world, narrow)[1] == "ok"
    assert run(world, narrow, method="POST") == (None, "token: method not allowed by token")
    assert run(world, narrow, path="/api/write") == (None, "token: path not allowed by token")
    # Every reading of the path an app could route must lie under the prefix.
    for spelling in ("/API/read/x", "/api/read%5Cx", "/api/read;x", "/api/reader", "/api/Read/x"):
        assert run(world, narrow, path=spelling) == (None, "token: path not allowed by token"), spelling
    assert run(world, narrow, path="/api/read/x%2Fy")[1] == "ok"
    # A case-folded reading is compared with the case-folded prefix.
    upper = token.add_caveat("path=/Api/Read").serialize()
    assert run(world, upper, path="/Api/Read/x")[1] == "ok"
    assert run(world, upper, path="/api/read/x") == (None, "token: path not allowed by token")
    # Spellings no reading can stand for never reach the token check.
    for spelling in ("/api/read/../write", "/api/read/%2e%2e/write", "/api/read/..;/write", "/api/read#/../w"):
        with pytest.raises(AmbiguousPath):
            original(path=spelling)
    # A POST named a DELETE by `?_method=` is judged as both.
    post_only = token.add_caveat("method=POST").serialize()
    assert run(world, post_only, method="POST")[1] == "ok"
    assert run(world, post_only, method="POST", path="/api/read/x?_method=DELETE") == (
        None, "token: method not allowed by token")


def test_expired_and_tampered_through_the_principal(world):
    token = mac.mint(world[0], TID, base_caveats()).serialize()
    assert run(world, token, now=NOW + 3600) == (None, "token: expired")
    raw = bytearray(b64d(token[4:]))
    raw[-1] ^= 1
    assert run(world, "fa1_" + b64e(bytes(raw))) == (None, "token: bad signature")


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer eyJhbGciOi.app.jwt", None),
        ("Bearer fa1_abc", "fa1_abc"),
        ("bearer   fa1_abc", "fa1_abc"),
        ("Bearer fa1_a b", None),
        ("Bearer fa1_" + "a" * 5000, None),
    ],
)
def test_bearer_header_parsing(header, expected):
    assert bearer_token(header) == expected


def test_base64_module_is_strict():
    assert base64.urlsafe_b64encode(b"x")  # sanity: the helper below relies on b64d refusing padding
    with pytest.raises(ValueError):
        b64d("eA==")
