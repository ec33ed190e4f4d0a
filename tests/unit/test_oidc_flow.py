"""The pure OIDC pieces: authorization request and every ID-token claim check."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from forwardauth.oidc import flow
from forwardauth.oidc.settings import OidcConfig

from .conftest import make_config

CFG = make_config("policy: {rules: []}\n")
OIDC = OidcConfig(issuer="https://idp.test", client_id="fa", client_secret="s")
NOW = 1_800_000_000.0


def login(**kw):
    d = {"rd": "https://app.example.com/x", "level": "mfa", "max_age": None, "now": NOW, "hint": None}
    d.update(kw)
    return flow.new_login(**d)


def claims(lg, **over):
    c = {"iss": "https://idp.test", "aud": "fa", "sub": "alice", "exp": NOW + 300, "iat": NOW - 5,
         "nonce": lg.nonce, "acr": "urn:acr:mfa", "auth_time": NOW - 5, "email": "a@x", "groups": ["g"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def check(lg, c):
    return flow.check_claims(c, OIDC, "https://idp.test", CFG.levels, lg, NOW)


def test_authorization_request_asks_for_the_level_and_binds_pkce():
    lg = login(max_age=900, hint="alice")
    url = flow.authorization_url("https://idp.test/auth", OIDC, CFG.levels, lg, "https://auth/cb", True)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q["acr_values"] == "urn:acr:mfa urn:acr:mfa2 urn:acr:hwk"
    assert json.loads(q["claims"]) == {"id_token": {"acr": {"essential": True,
                                                            "values": ["urn:acr:mfa", "urn:acr:mfa2", "urn:acr:hwk"]},
                                                    "auth_time": {"essential": True}}}
    assert (q["max_age"], q["prompt"], q["login_hint"]) == ("900", "login", "alice")
    assert q["code_challenge_method"] == "S256"
    assert q["code_challenge"] == flow.pkce_challenge(lg.verifier) != lg.verifier
    assert (q["state"], q["nonce"], q["redirect_uri"]) == (lg.state, lg.nonce, "https://auth/cb")


def test_pkce_rfc7636_example():
    assert flow.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_valid_claims():
    lg = login()
    p = check(lg, claims(lg))
    assert (p.sub, p.level, p.email, p.groups) == ("alice", "mfa", "a@x", ("g",))


def test_lower_acr_is_what_counts():
    lg = login()
    assert check(lg, claims(lg, acr="urn:acr:pwd")).level == "password"


def test_amr_when_no_acr():
    lg = login()
    assert check(lg, claims(lg, acr=None, amr=["pwd", "otp"])).level == "mfa"


@pytest.mark.parametrize("over,message", [
    ({"iss": "https://evil.test"}, "ID token from the wrong issuer"),
    ({"aud": "other"}, "ID token not issued for this client (aud)"),
    ({"aud": ["fa", "other"]}, "ID token authorized party (azp) is not this client"),
    ({"aud": ["fa", "other"], "azp": "other"}, "ID token authorized party (azp) is not this client"),
    ({"exp": NOW - 61}, "ID token expired"),
    ({"iat": NOW + 120}, "ID token issued at an unacceptable time (iat)"),
    ({"iat": NOW - 3600}, "ID token issued at an unacceptable time (iat)"),
    ({"nonce": "other"}, "ID token nonce does not match this login"),
    ({"sub": ""}, "ID token has no valid subject"),
])
def test_refused_claims(over, message):
    lg = login()
    with pytest.raises(flow.LoginError) as exc:
        check(lg, claims(lg, **over))
    assert (exc.value.status, exc.value.message) == (401, message)


def test_max_age_requires_auth_time_and_freshness():
    lg = login(max_age=300)
    c = claims(lg)
    del c["auth_time"]
    with pytest.raises(flow.LoginError, match="lacks auth_time although max_age was requested"):
        check(lg, c)
    with pytest.raises(flow.LoginError, match="did not re-authenticate within max_age"):
        check(lg, claims(lg, auth_time=NOW - 1000))
    assert check(lg, claims(lg, auth_time=NOW - 100)).level == "mfa"


def test_login_state_round_trip_and_cookie_names_differ_per_login():
    a, b = login(), login()
    assert flow.LoginState.from_json(a.to_json()) == a
    assert flow.login_cookie_name("fa", a.state) != flow.login_cookie_name("fa", b.state)


def test_unforced_login_asks_for_no_auth_time_and_no_reauthentication():
    url = flow.authorization_url("https://idp.test/auth", OIDC, CFG.levels, login(), "https://auth/cb", False)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert json.loads(q["claims"]) == {"id_token": {"acr": {"essential": True,
                                                            "values": ["urn:acr:mfa", "urn:acr:mfa2", "urn:acr:hwk"]}}}
    assert "prompt" not in q and "max_age" not in q


def test_forced_login_refuses_an_auth_time_from_before_it_started():
    lg = login(forced=True)
    with pytest.raises(flow.LoginError) as exc:
        check(lg, claims(lg, auth_time=NOW - 61))  # clock_skew is 60 s
    assert (exc.value.status, exc.value.message) == (
        401, "the provider did not re-authenticate as asked (auth_time is older than this sign-in)")
    assert check(lg, claims(lg, auth_time=NOW - 59)).auth_time == NOW - 59


@pytest.mark.parametrize("forced,auth_time,expected", [
    (True, NOW - 30, NOW + 10),    # forced: the callback's own time (auth_time may lag after a step-up)
    (True, None, None),            # forced, no auth_time: no proof time at all
    (False, NOW - 3600, NOW - 3600),  # answered from an SSO session: its auth_time
    (False, NOW + 500, NOW + 10),  # never later than now
    (False, None, None),           # no auth_time: conservative, no proof time
])
def test_proof_time(forced, auth_time, expected):
    lg = login(forced=forced)
    proven = check(lg, claims(lg, auth_time=auth_time))
    assert flow.proof_time(proven, lg, NOW + 10) == expected


@pytest.mark.parametrize("value,expected", [
    (["a", "b"], ("a", "b")),
    ("admins", ("admins",)),               # one name, not six one-letter groups
    (["ok", "", "x" * 256, 7, None], ("ok",)),
    ({"a": 1}, ()),
    (None, ()),
    ([f"g{i}" for i in range(300)], tuple(f"g{i}" for i in range(256))),
])
def test_groups_normalisation(value, expected):
    assert flow.groups_of(value) == expected


@pytest.mark.parametrize("change", [{"created": "x"}, {"forced": "yes"}, {"max_age": []}, {"hint": 5},
                                    {"unknown": 1}])
def test_login_state_refuses_odd_fields(change):
    d = json.loads(login().to_json())
    d.update(change)
    with pytest.raises((ValueError, TypeError)):
        flow.LoginState.from_json(json.dumps(d).encode())


@pytest.mark.parametrize("name", ["response_mode", "request", "request_uri", "state", "prompt"])
def test_protocol_parameters_cannot_be_extra_auth_params(name):
    from forwardauth.core.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_config("policy: {rules: []}\noidc: {issuer: https://idp.test, client_id: fa, client_secret: s, "
                    f"extra_auth_params: {{{name}: x}}}}\n")
    assert f"oidc.extra_auth_params.{name}: is set by forwardauth and cannot be overridden" in str(exc.value)


def test_login_timeout_is_at_most_an_hour():
    from forwardauth.core.errors import ConfigError

    base = "policy: {rules: []}\noidc: {issuer: https://idp.test, client_id: fa, client_secret: s, login_timeout: %s}\n"
    assert make_config(base % "1h").sections["oidc"].login_timeout == 3600
    with pytest.raises(ConfigError) as exc:
        make_config(base % "61m")
    assert "oidc.login_timeout: must be at most 1h, got 3660s" in str(exc.value)
