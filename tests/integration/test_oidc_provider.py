"""The test OpenID provider itself: a real oidc-provider on loopback that the
tests can steer (who signs in, which acr is achieved), driven here over plain
HTTP, with no browser and no forwardauth."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from harness.oidc import (
    ACR_HARDWARE,
    ACR_MFA,
    ACR_PASSWORD,
    ACR_VALUES,
    OidcProvider,
    ProviderError,
    ProviderUserAgent,
)
from harness.procs import free_port

pytestmark = pytest.mark.oidc

CALLBACK = f"http://127.0.0.1:{free_port()}/oauth2/callback"  # never contacted
OTHER_CALLBACK = "http://127.0.0.1:9/other/callback"
AFTER_LOGOUT = "http://127.0.0.1:9/signed-out"


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    with OidcProvider(
        redirect_uris=[CALLBACK, OTHER_CALLBACK],
        post_logout_redirect_uris=[AFTER_LOGOUT],
        log_dir=tmp_path_factory.mktemp("oidc"),
    ) as provider:
        yield provider


@pytest.fixture(autouse=True)
def _clean_queue(request):
    if "op" in request.fixturenames:
        op = request.getfixturevalue("op")
        op.clear_logins()
        yield
        assert op.queued_logins() == [], "a queued login was not used"
    else:
        yield


# ---------------------------------------------------------------- helpers

def _no_proxy_open(req, timeout=10):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Login:
    """One authorization request's secrets, the way a relying party keeps them."""

    def __init__(self, op: OidcProvider, **params):
        self.op = op
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        self.verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        self.redirect_uri = params.pop("redirect_uri", CALLBACK)
        query = {
            "response_type": "code",
            "client_id": op.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid email profile groups",
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        query.update({k: v for k, v in params.items() if v is not None})
        self.url = op.discovery["authorization_endpoint"] + "?" + urllib.parse.urlencode(query)

    def callback_params(self, location: str) -> dict[str, str]:
        assert location.startswith(self.redirect_uri + "?"), location
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        assert params["state"] == self.state
        assert params.get("iss") == self.op.issuer  # RFC 9207
        return params

    def exchange(self, code: str, *, auth: str = "basic", verifier: str | None = None):
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier or self.verifier,
        }
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if auth == "basic":
            cred = f"{urllib.parse.quote(self.op.client_id)}:{urllib.parse.quote(self.op.client_secret)}"
            headers["authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        else:
            form["client_id"] = self.op.client_id
            form["client_secret"] = self.op.client_secret
        req = urllib.request.Request(self.op.discovery["token_endpoint"],
                                     data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST")
        return _no_proxy_open(req)

    def id_token_claims(self, ua: ProviderUserAgent, *, auth: str = "basic") -> dict:
        params = self.callback_params(ua.follow(self.url))
        assert "code" in params, params
        status, tokens = self.exchange(params["code"], auth=auth)
        assert status == 200, tokens
        return verify_id_token(self.op, tokens["id_token"], nonce=self.nonce)


def verify_id_token(op: OidcProvider, token: str, *, nonce: str) -> dict:
    keys = KeySet.import_key_set(op.jwks())
    decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256"])  # raises on a bad signature
    claims = decoded.claims
    assert decoded.header["alg"] == op.id_token_alg
    assert claims["iss"] == op.issuer
    assert claims["aud"] == op.client_id
    assert claims["nonce"] == nonce
    now = time.time()
    assert claims["iat"] <= now + 5 and claims["exp"] > now
    return claims


# ---------------------------------------------------------------- discovery and keys

def test_discovery_lists_acr_values_pkce_and_logout(op):
    d = op.discovery
    assert d["issuer"] == op.issuer
    assert d["acr_values_supported"] == list(ACR_VALUES)
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert d["end_session_endpoint"] == op.url("/session/end")
    assert d["claims_parameter_supported"] is True
    assert {"RS256", "ES256"} <= set(d["id_token_signing_alg_values_supported"])
    assert {"client_secret_basic", "client_secret_post"} <= set(d["token_endpoint_auth_methods_supported"])
    assert {"sub", "email", "name", "groups", "acr", "amr", "auth_time"} <= set(d["claims_supported"])
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        assert d[endpoint].startswith(f"http://127.0.0.1:{op.port}/")


def test_jwks_serves_public_rsa_and_ec_keys(op):
    keys = op.jwks()["keys"]
    assert {k["kty"] for k in keys} == {"RSA", "EC"}
    assert all(k.get("kid") and k.get("use") == "sig" for k in keys)
    assert not any("d" in k or "p" in k for k in keys), "private parts leaked"
    private = op.private_jwks()["keys"]
    assert {k["kid"] for k in private} == {k["kid"] for k in keys}
    assert all("d" in k for k in private)


# ---------------------------------------------------------------- code flow

def test_code_flow_answers_with_the_lower_acr_the_test_chose(op):
    op.next_login("alice", ACR_PASSWORD, amr=["pwd"], groups=["staff", "ops"], name="Alice Liddell")
    login = Login(op, acr_values=ACR_MFA)
    ua = op.user_agent()
    before = int(time.time())

    location = ua.follow(login.url)

    # authorize -> interaction (completed by next_login) -> resume -> redirect_uri
    assert [(m, urllib.parse.urlsplit(u).path, s) for m, u, s in ua.history] == [
        ("GET", "/auth", 303),
        ("GET", urllib.parse.urlsplit(ua.history[1][1]).path, 303),
        ("GET", urllib.parse.urlsplit(ua.history[2][1]).path, 303),
    ]
    assert ua.history[1][1].startswith(op.url("/interaction/"))
    assert ua.history[2][1].startswith(op.url("/auth/"))
    params = login.callback_params(location)
    status, tokens = login.exchange(params["code"])
    assert status == 200, tokens
    assert tokens["token_type"].lower() == "bearer"
    claims = verify_id_token(op, tokens["id_token"], nonce=login.nonce)

    assert claims["sub"] == "alice"
    assert claims["acr"] == ACR_PASSWORD  # lower than the mfa asked for: the provider does not pretend
    assert claims["amr"] == ["pwd"]
    assert before - 2 <= claims["auth_time"] <= int(time.time()) + 1
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice Liddell"
    assert claims["groups"] == ["staff", "ops"]

    # what the provider was asked, as the interaction saw it
    seen = op.interactions()[-1]
    assert seen["prompt"]["name"] == "login" and seen["auto"] is True
    assert seen["params"]["acr_values"] == ACR_MFA

    # the code is single use
    status, err = login.exchange(params["code"])
    assert status == 400 and err["error"] == "invalid_grant"


def test_client_secret_post_and_es256_ready_signing(op):
    op.next_login("bob", ACR_HARDWARE, amr=["hwk"], email="bob@corp.test")
    login = Login(op, acr_values=f"{ACR_HARDWARE} {ACR_MFA}", redirect_uri=OTHER_CALLBACK)
    claims = login.id_token_claims(op.user_agent(), auth="post")
    assert (claims["sub"], claims["acr"], claims["email"]) == ("bob", ACR_HARDWARE, "bob@corp.test")
    assert claims["groups"] == []


def test_acr_defaults_to_the_first_requested_value_and_can_be_left_out(op):
    op.next_login("carol")  # acr left out: the first acr_values value
    claims = Login(op, acr_values=f"{ACR_MFA} {ACR_HARDWARE}").id_token_claims(op.user_agent())
    assert claims["acr"] == ACR_MFA and "amr" not in claims

    op.next_login("carol", None, amr=["pwd", "otp"])  # no acr claim at all: the RP falls back to amr
    claims = Login(op, acr_values=ACR_MFA).id_token_claims(op.user_agent())
    assert "acr" not in claims and claims["amr"] == ["pwd", "otp"]


def test_pkce_is_required_and_checked(op):
    ua = op.user_agent()
    login = Login(op)
    no_pkce = login.url.replace("code_challenge=", "x_challenge=").replace("code_challenge_method=", "x_method=")
    params = login.callback_params(ua.follow(no_pkce))
    assert params["error"] == "invalid_request" and "PKCE" in params["error_description"]

    op.next_login("dave", ACR_PASSWORD)
    params = login.callback_params(ua.follow(login.url))
    status, err = login.exchange(params["code"], verifier=secrets.token_urlsafe(48))
    assert status == 400 and err["error"] == "invalid_grant"


def test_unregistered_redirect_uri_is_refused_at_the_provider(op):
    login = Login(op, redirect_uri="http://127.0.0.1:9/evil")
    status, _, body = op.user_agent().request("GET", login.url)
    assert status == 400 and "redirect_uri" in body


# ---------------------------------------------------------------- SSO session, step-up, freshness

def test_step_up_prompt_login_and_max_age_start_new_interactions(op):
    ua = op.user_agent()
    op.next_login("erin", ACR_PASSWORD, amr=["pwd"], auth_time_offset=-600)
    first = Login(op).id_token_claims(ua)
    assert first["acr"] == ACR_PASSWORD
    assert abs(first["auth_time"] - (time.time() - 600)) < 5

    # the SSO session answers a plain request without any interaction
    n = len(op.interactions())
    again = Login(op).id_token_claims(ua)
    assert again["sub"] == "erin" and again["auth_time"] == first["auth_time"]
    assert len(op.interactions()) == n

    # acr_values the session does not meet: a new login (step_up_on_acr_values)
    op.next_login("erin", ACR_MFA, amr=["pwd", "otp"])
    stepped = Login(op, acr_values=ACR_MFA).id_token_claims(ua)
    assert stepped["acr"] == ACR_MFA and stepped["auth_time"] > first["auth_time"]
    assert op.interactions()[-1]["prompt"]["reasons"] == ["acr_values_not_met"]

    # and now the session meets mfa: no interaction
    n = len(op.interactions())
    assert Login(op, acr_values=ACR_MFA).id_token_claims(ua)["acr"] == ACR_MFA
    assert len(op.interactions()) == n

    # prompt=login forces one even so
    op.next_login("erin", ACR_PASSWORD)
    forced = Login(op, acr_values=ACR_MFA, prompt="login", login_hint="erin").id_token_claims(ua)
    assert forced["acr"] == ACR_PASSWORD
    seen = op.interactions()[-1]
    assert "login_prompt" in seen["prompt"]["reasons"] and seen["params"]["login_hint"] == "erin"

    # max_age older than the proof: a new login; without a queued one the form shows
    op.next_login("erin", ACR_PASSWORD, auth_time_offset=-120)
    assert Login(op, prompt="login").id_token_claims(ua)["auth_time"] < time.time() - 100
    with pytest.raises(ProviderError, match="login form"):
        ua.follow(Login(op, max_age="60").url)
    op.next_login("erin", ACR_PASSWORD)
    fresh = Login(op, max_age="60").id_token_claims(ua)
    assert time.time() - fresh["auth_time"] < 5
    assert "max_age" in op.interactions()[-1]["prompt"]["reasons"]


def test_a_different_subject_replaces_the_providers_session(op):
    ua = op.user_agent()
    op.next_login("frank", ACR_PASSWORD)
    assert Login(op).id_token_claims(ua)["sub"] == "frank"
    op.next_login("grace", ACR_MFA)
    claims = Login(op, acr_values=ACR_MFA, prompt="login", login_hint="frank").id_token_claims(ua)
    assert (claims["sub"], claims["acr"]) == ("grace", ACR_MFA)
    # the provider signed frank out on the way (an auto-submitted form)
    assert any(u.startswith(op.url("/session/end/confirm")) for _, u, _ in ua.history)


def test_essential_acr_in_claims_fails_instead_of_answering_lower(op):
    op.next_login("heidi", ACR_PASSWORD)
    claims_req = json.dumps({"id_token": {"acr": {"essential": True, "values": [ACR_MFA, ACR_HARDWARE]}}})
    login = Login(op, claims=claims_req)
    params = login.callback_params(op.user_agent().follow(login.url))
    assert params["error"] == "unmet_authentication_requirements"

    op.next_login("heidi", ACR_HARDWARE)
    assert Login(op, claims=claims_req).id_token_claims(op.user_agent())["acr"] == ACR_HARDWARE


def test_interaction_can_end_in_an_error(op):
    op.next_login("ivan", error="access_denied")
    login = Login(op, acr_values=ACR_MFA)
    params = login.callback_params(op.user_agent().follow(login.url))
    assert params["error"] == "access_denied"


def test_id_token_rewrite_omits_auth_time_and_stays_validly_signed(op):
    op.next_login("judy", ACR_PASSWORD, id_token_omit=["auth_time"], id_token_set={"extra": "x"})
    claims = Login(op, max_age="300").id_token_claims(op.user_agent())  # signature checked
    assert "auth_time" not in claims and claims["extra"] == "x" and claims["sub"] == "judy"
    # only once
    op.next_login("judy", ACR_PASSWORD)
    assert "auth_time" in Login(op, max_age="300").id_token_claims(op.user_agent())


# ---------------------------------------------------------------- the browser form, over HTTP

def test_login_form_for_a_browser_and_its_post(op):
    ua = op.user_agent()
    login = Login(op, acr_values=f"{ACR_MFA} {ACR_PASSWORD}", login_hint="kim")
    status, headers, _ = ua.request("GET", login.url)
    assert status == 303
    form_url = urllib.parse.urljoin(login.url, headers["location"])
    status, _, page = ua.request("GET", form_url)
    assert status == 200
    assert 'id="submit"' in page and 'name="login"' in page and 'value="kim"' in page
    assert f'<option value="{ACR_MFA}" selected>' in page
    assert "fonts.googleapis" not in page and "http" not in page.split("<pre")[0].replace(op.issuer, "")

    status, headers, _ = ua.request("POST", form_url + "/login", [
        ("login", "kim"), ("acr", ACR_PASSWORD), ("amr", "pwd"), ("groups", "a, b"), ("email", ""), ("name", "")])
    assert status == 303
    location = ua.follow(urllib.parse.urljoin(form_url, headers["location"]))
    params = login.callback_params(location)
    status, tokens = login.exchange(params["code"])
    claims = verify_id_token(op, tokens["id_token"], nonce=login.nonce)
    assert (claims["sub"], claims["acr"], claims["amr"], claims["groups"]) == ("kim", ACR_PASSWORD, ["pwd"], ["a", "b"])


# ---------------------------------------------------------------- sign-out

def test_rp_initiated_logout_returns_to_the_registered_uri(op):
    ua = op.user_agent()
    op.next_login("leo", ACR_PASSWORD)
    login = Login(op)
    params = login.callback_params(ua.follow(login.url))
    status, tokens = login.exchange(params["code"])
    assert status == 200

    end = op.discovery["end_session_endpoint"] + "?" + urllib.parse.urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT, "state": "bye"})
    back = ua.follow(end)
    assert back == AFTER_LOGOUT + "?state=bye"
    # signed out at the provider: the next request needs a login
    with pytest.raises(ProviderError, match="login form"):
        ua.follow(Login(op).url)

    bad = op.discovery["end_session_endpoint"] + "?" + urllib.parse.urlencode({
        "client_id": op.client_id, "post_logout_redirect_uri": "http://127.0.0.1:9/elsewhere"})
    status, _, body = ua.request("GET", bad)
    assert status == 400 and "post_logout_redirect_uri" in body


# ---------------------------------------------------------------- options that need their own provider

def test_stock_acr_values_handling_and_key_rotation(tmp_path):
    with OidcProvider(redirect_uris=[CALLBACK], step_up_on_acr_values=False, id_token_alg="ES256",
                      log_dir=tmp_path) as other:
        ua = other.user_agent()
        other.next_login("mallory", ACR_PASSWORD)
        assert Login(other).id_token_claims(ua)["acr"] == ACR_PASSWORD
        # stock oidc-provider: acr_values is a wish; the session answers with what it has
        n = len(other.interactions())
        assert Login(other, acr_values=ACR_MFA).id_token_claims(ua)["acr"] == ACR_PASSWORD
        assert len(other.interactions()) == n

        old_kids = {k["kid"] for k in other.jwks()["keys"]}
        port = other.port
        other.rotate_keys()
        assert other.port == port
        assert not old_kids & {k["kid"] for k in other.jwks()["keys"]}
        other.next_login("mallory", ACR_MFA)
        assert Login(other).id_token_claims(other.user_agent())["acr"] == ACR_MFA

        proc = other._proc
    assert proc is not None and proc.poll() is not None, "provider still running after the with block"
