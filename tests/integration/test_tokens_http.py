"""Tokens end to end against a real `forwardauth serve` (SQLite state): the
decision endpoint, the CLI, the admin API, the exchange, the JWKS, the
identity assertion and the audit log."""

from __future__ import annotations

import json
import time

import pytest

from forwardauth.tokens.jwt import JwtError, keyset_from_jwks, verify
from harness.tokens import APP, AUTH, TokenServer


@pytest.fixture(scope="module")
def fa(tmp_path_factory):
    server = TokenServer(tmp_path_factory.mktemp("tokens"),
                         tokens={"assertion": {"enabled": True}, "levels": {"root": "mfa"}})
    server.account("root", roles="admin,admins")
    server.account("alice", roles="backup")
    server.account("bob")
    server.account("backup", kind="system")
    server.account("deploy", kind="system")
    with server:
        yield server


@pytest.fixture(scope="module")
def admin(fa):
    return fa.token("root", "--name", "admin", "--level", "mfa")


# Well formed, all caveats valid, under a key id this server does not have.
FOREIGN = ("fa1_AQAqdjE6azE6MGYwN2Q0NzUtNmVjMy00YjhjLTljMTgtZGQ2YTI1MWU1OTAyBAALYWNjb3VudD1ib2IADmxldmVsPXBhc3N3b3Jk"
           "AAhpc3N1ZWQ9MQASZXhwaXJlcz05OTk5OTk5OTk5" + "A" * 43)


def eventually(check, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def jwks(fa):
    r = fa.api("GET", "/.well-known/jwks.json")
    assert r.status == 200, r
    return keyset_from_jwks(r.json())


# --- the decision endpoint -----------------------------------------------------------


def test_bearer_token_is_accepted_with_identity_headers(fa):
    tok = fa.token("backup")
    r = eventually(lambda: (x := fa.decide("/api/x", tok)).status == 200 and x)
    assert r, fa.decide("/api/x", tok)
    assert r.header("X-Auth-Request-User") == "backup"
    assert r.header("Remote-User") == "backup"
    assert r.header("X-Auth-Request-Level") == "password"


def test_token_level_is_enforced(fa, admin):
    tok = fa.token("bob")
    r = eventually(lambda: (x := fa.decide("/mfa/x", tok)).status == 401 and x.json()["error"] != "invalid_token" and x)
    assert r.json() == {"error": "insufficient_user_authentication",
                        "error_description": "Level mfa is required", "required_level": "mfa"}
    assert eventually(lambda: fa.decide("/mfa/x", admin).status == 200)


def test_groups_come_from_the_account(fa, admin):
    assert eventually(lambda: fa.decide("/admin/x", admin).status == 200)
    bob = fa.token("bob", "--name", "second")
    assert eventually(lambda: fa.decide("/admin/x", bob).status == 403)


@pytest.mark.parametrize("header, reason", [
    ("Bearer fa1_AAAA", "unsupported token version"),
    ("Bearer fa1_AQAq", "truncated token"),
    ("Bearer fa1_!!!!", "malformed"),
    ("Bearer fa1_" + "A" * 5000, "malformed"),
    ("Bearer " + FOREIGN, "unknown key"),
])
def test_bad_bearer_tokens_are_not_signed_in(fa, header, reason):
    """Not signed in, and the answer says what was wrong with the token (never the token)."""
    r = fa.decide("/api/x", headers={"Authorization": header})
    assert r.status == 401
    assert r.header("WWW-Authenticate") == \
        f'Bearer realm="forwardauth", error="invalid_token", error_description="{reason}"'
    assert r.json() == {"error": "invalid_token", "error_description": f"The bearer token was refused: {reason}",
                        "required_level": "password"}


def test_other_authorization_schemes_are_left_to_the_app(fa):
    r = fa.decide("/api/x", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="forwardauth"'


def test_tampered_token_is_refused(fa):
    tok = fa.token("bob", "--name", "tamper")
    bad = tok[:-2] + ("A" if tok[-2] != "A" else "B") + tok[-1]
    assert fa.decide("/api/x", bad).status == 401


def test_attenuated_token_is_narrower(fa):
    tok = fa.token("bob", "--name", "narrow")
    ro = fa.cli("tokens", "attenuate", tok, "--method", "GET,HEAD", "--path", "/api/read", "--expires", "1h").strip()
    assert eventually(lambda: fa.decide("/api/read/1", ro).status == 200)
    assert fa.decide("/api/read/1", ro, method="POST").status == 401
    assert fa.decide("/api/write", ro).status == 401
    assert fa.decide("/api/read/1", tok, method="POST").status == 200  # the original is untouched


def test_revoked_token_is_refused(fa):
    tok = fa.token("bob", "--name", "revoke-me")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    token_id = json.loads(fa.cli("tokens", "inspect", tok))["token_id"]
    fa.cli("tokens", "revoke", token_id)
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)


def test_epoch_bump_revokes_tokens(fa):
    fa.account("carol")
    tok = fa.token("carol")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    fa.cli("session", "revoke", "--user", "carol")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)
    fresh = fa.token("carol", "--name", "after")
    assert eventually(lambda: fa.decide("/api/x", fresh).status == 200)


def test_lock_kills_every_token(fa):
    fa.account("dave")
    tok = fa.token("dave")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    fa.cli("accounts", "lock", "dave")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)


def test_identity_assertion_verifies_with_the_jwks(fa):
    tok = fa.token("backup")
    r = eventually(lambda: (x := fa.decide("/api/x", tok)).status == 200 and x)
    assertion = r.header("X-Auth-Request-Jwt")
    claims = verify(assertion, jwks(fa), algorithm="ES256", issuer=f"http://{AUTH}:{fa.port}", audience=APP,
                    now=time.time())
    assert claims["sub"] == "backup" and claims["level"] == "password" and claims["exp"] - claims["iat"] <= 60
    with pytest.raises(JwtError, match="invalid_claim"):
        verify(assertion, jwks(fa), algorithm="ES256", issuer=f"http://{AUTH}:{fa.port}", audience="other.test",
               now=time.time())


# --- exchange ---------------------------------------------------------------------------


def test_exchange_for_a_short_lived_jwt(fa):
    tok = fa.token("deploy")
    r = eventually(lambda: (x := fa.api("POST", "/api/v1/token", tok)).status == 200 and x)
    assert r, fa.api("POST", "/api/v1/token", tok)
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    claims = verify(body["access_token"], jwks(fa), algorithm="ES256", issuer=f"http://{AUTH}:{fa.port}",
                    audience="forwardauth", now=time.time())
    assert claims["sub"] == "deploy" and claims["tid"] == json.loads(fa.cli("tokens", "inspect", tok))["token_id"]


def test_a_narrowed_token_cannot_be_exchanged_into_a_wider_jwt(fa):
    tok = fa.token("bob", "--name", "no-exchange")
    ro = fa.cli("tokens", "attenuate", tok, "--path", "/api/read").strip()
    r = fa.api("POST", "/api/v1/token", ro)
    assert r.status == 401
    assert r.json() == {"error": "invalid_token", "error_description": "path not allowed by token"}


def test_exchange_refusals(fa):
    r = fa.api("POST", "/api/v1/token", body={"username": "nobody", "password": "x" * 12})
    assert (r.status, r.json()["error"]) == (401, "invalid_grant")
    r = fa.api("POST", "/api/v1/token", body={"username": "bob"})
    assert (r.status, r.json()) == (400, {"error": "invalid_request", "error_description": "missing field(s): password"})
    r = fa.api("POST", "/api/v1/token", headers={"Authorization": "Bearer nope"})
    assert (r.status, r.json()["error"]) == (401, "invalid_token")


# --- admin API ----------------------------------------------------------------------------


def test_api_needs_a_token(fa):
    r = fa.api("GET", "/api/v1/accounts")
    assert r.status == 401
    assert r.json() == {"error": "unauthorized", "error_description": "a forwardauth bearer token is required"}
    assert r.header("WWW-Authenticate") == 'Bearer realm="forwardauth"'


def test_api_refuses_non_admins(fa):
    bob = fa.token("bob", "--name", "api")
    r = eventually(lambda: (x := fa.api("GET", "/api/v1/accounts", bob)).status != 401 and x)
    assert (r.status, r.json()) == (403, {"error": "forbidden", "error_description": "only admins may list accounts"})


def test_operator_flow_through_the_api(fa, admin):
    """Create a service account, give a role holder the right, issue, narrow, exchange, revoke: all audited."""
    r = fa.api("POST", "/api/v1/accounts", admin, {"username": "reports", "kind": "system"})
    assert r.status == 201, r
    assert fa.api("POST", "/api/v1/accounts", admin, {"username": "reports"}).status == 409
    assert fa.api("PUT", "/api/v1/accounts/alice/roles", admin, {"roles": ["backup", "reports"]}).json()["roles"] == \
        ["backup", "reports"]
    alice = fa.token("alice", "--name", "laptop")
    r = eventually(lambda: (x := fa.api("POST", "/api/v1/accounts/reports/tokens", alice,
                                        {"name": "nightly", "lifetime": "7d"})).status == 201 and x)
    assert r, fa.api("POST", "/api/v1/accounts/reports/tokens", alice, {"name": "nightly"})
    issued = r.json()
    svc_token, token_id = issued["token"], issued["id"]
    assert issued["account"] == "reports" and issued["created_by"] == "alice"
    assert eventually(lambda: fa.decide("/api/x", svc_token).status == 200)
    narrow = fa.cli("tokens", "attenuate", svc_token, "--method", "GET").strip()
    assert fa.decide("/api/x", narrow, method="POST").status == 401
    assert fa.api("POST", "/api/v1/token", svc_token).status == 200
    listed = eventually(lambda: [t for t in fa.api("GET", "/api/v1/accounts/reports/tokens", admin).json()
                                 if t["id"] == token_id and t["last_used"]])
    assert listed and listed[0]["last_used"] > issued["created"]
    assert fa.api("DELETE", f"/api/v1/tokens/{token_id}", alice).status == 403  # role holders issue, admins revoke
    r = fa.api("DELETE", f"/api/v1/tokens/{token_id}", admin)
    assert r.status == 200 and r.json()["revoked"]
    assert eventually(lambda: fa.decide("/api/x", svc_token).status == 401)
    events = [(e["event"], e["user"]) for e in fa.audit()]
    for step in [("account_created", "reports"), ("account_updated", "alice"), ("token_issued", "reports"),
                 ("token_exchanged", "reports"), ("token_used", "reports"), ("token_revoked", "reports")]:
        assert step in events, step
    text = (fa.workdir / "audit.log").read_text()
    assert svc_token not in text and svc_token[:40] not in text and admin[:40] not in text


def test_system_account_single_token_through_the_api(fa, admin):
    first = eventually(lambda: (x := fa.api("POST", "/api/v1/accounts/deploy/tokens", admin, {})).status == 201
                       and x).json()
    second = fa.api("POST", "/api/v1/accounts/deploy/tokens", admin, {}).json()
    tokens = {t["id"]: t for t in fa.api("GET", "/api/v1/accounts/deploy/tokens", admin).json()}
    assert tokens[first["id"]]["revoked"] and not tokens[second["id"]]["revoked"]
    assert eventually(lambda: fa.decide("/api/x", first["token"]).status == 401)
    assert fa.decide("/api/x", second["token"]).status == 200


def test_dbcreds_through_the_api(fa, admin):
    creds = {"host": "db.internal", "port": 5432, "database": "backup", "username": "backup", "password": "pw-123"}
    assert fa.api("PUT", "/api/v1/accounts/backup/dbcreds", admin, creds).status == 204
    r = fa.api("GET", "/api/v1/accounts/backup/dbcreds", admin)
    assert (r.status, r.json()["error"]) == (403, "forbidden")  # admins set, role holders read
    alice = fa.token("alice", "--name", "creds")
    r = eventually(lambda: (x := fa.api("GET", "/api/v1/accounts/backup/dbcreds", alice)).status == 200 and x)
    assert r.json() == creds
    svc = fa.token("backup")
    assert eventually(lambda: fa.api("GET", "/api/v1/accounts/backup/dbcreds", svc).status == 200)
    assert json.loads(fa.cli("dbcreds", "get", "backup")) == creds
    raw = (fa.workdir / "state.db").read_bytes()
    assert b"pw-123" not in raw and b"db.internal" not in raw
    assert "pw-123" not in (fa.workdir / "audit.log").read_text()


@pytest.mark.parametrize("method, path, body, headers, status, error", [
    ("POST", "/api/v1/accounts", None, {"Content-Type": "text/plain"}, 415, "invalid_request"),
    ("POST", "/api/v1/accounts", "not json", None, 400, "invalid_request"),
    ("POST", "/api/v1/accounts", {"username": "x1", "admin": True}, None, 400, "invalid_request"),
    ("POST", "/api/v1/accounts", {"username": "Bad Name"}, None, 400, "invalid_request"),
    ("POST", "/api/v1/accounts", {"username": "x2", "kind": "robot"}, None, 400, "invalid_request"),
    ("POST", "/api/v1/accounts", [1, 2], None, 400, "invalid_request"),
    ("GET", "/api/v1/accounts/ghost", None, None, 404, "not_found"),
    ("GET", "/api/v1/accounts/BAD!", None, None, 400, "invalid_request"),
    ("DELETE", "/api/v1/tokens/not-a-uuid", None, None, 400, "invalid_request"),
    ("DELETE", "/api/v1/tokens/00000000-0000-0000-0000-000000000000", None, None, 404, "not_found"),
    ("POST", "/api/v1/accounts/bob/tokens", {"lifetime": "forever"}, None, 400, "invalid_request"),
    ("POST", "/api/v1/accounts/bob/tokens", {"method": "FETCH"}, None, 400, "invalid_request"),
    ("PUT", "/api/v1/accounts/backup/dbcreds", {"host": "h"}, None, 400, "invalid_request"),
    ("PUT", "/api/v1/accounts/backup/roles", {"roles": "admin"}, None, 400, "invalid_request"),
])
def test_bad_api_input_gets_a_clear_answer(fa, admin, method, path, body, headers, status, error):
    data = body
    hdrs = dict(headers or {})
    if isinstance(body, str):
        hdrs["Content-Type"] = "application/json"
    r = eventually(lambda: (x := _raw(fa, method, path, admin, data, hdrs)).status != 401 and x)
    assert r, _raw(fa, method, path, admin, data, hdrs)
    assert r.status == status, r
    assert r.json()["error"] == error and r.json()["error_description"]


def _raw(fa, method, path, token, body, headers):
    import http.client

    from harness.client import Reply

    h = {"Host": f"{AUTH}:{fa.port}", "Authorization": f"Bearer {token}", **headers}
    payload = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    if payload is not None and "Content-Type" not in h:
        h["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", fa.port, timeout=10)
    try:
        conn.request(method, path, body=payload, headers=h)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def test_openapi_document_is_served(fa):
    doc = fa.api("GET", "/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/token" in doc["paths"]


# --- narrowed tokens on the API (audit finding: they could be widened) -------------------


def _attenuate(fa, tok, *args):
    return fa.cli("tokens", "attenuate", tok, *args).strip()


def test_a_narrowed_token_cannot_issue_a_wider_one(fa, admin):
    bob = fa.token("bob", "--name", "widen")
    assert eventually(lambda: fa.api("GET", "/api/v1/accounts/bob/tokens", bob).status == 200)
    refused = {"error": "forbidden", "error_description": "a narrowed token (attenuated, or issued with host, path "
                                                          "or method limits) may not issue tokens; use a token as "
                                                          "it was issued"}
    short = _attenuate(fa, bob, "--expires", "1h")
    r = fa.api("POST", "/api/v1/accounts/bob/tokens", short, {"name": "escape"})
    assert (r.status, r.json()) == (403, refused)
    api_only = _attenuate(fa, admin, "--path", "/api/v1/accounts")
    r = fa.api("POST", "/api/v1/accounts/bob/tokens", api_only, {"name": "escape"})
    assert (r.status, r.json()) == (403, refused)
    limited = fa.token("bob", "--name", "limited", "--method", "GET,POST")  # limited when issued: the same
    assert eventually(lambda: fa.api("GET", "/api/v1/accounts/bob/tokens", limited).status == 200)
    r = fa.api("POST", "/api/v1/accounts/bob/tokens", limited, {"name": "escape"})
    assert (r.status, r.json()) == (403, refused)
    assert not [t for t in fa.api("GET", "/api/v1/accounts/bob/tokens", admin).json() if t["name"] == "escape"]
    # The token as issued still issues; a narrowed admin token still administers what its caveats allow.
    assert fa.api("POST", "/api/v1/accounts/bob/tokens", bob, {"name": "fine"}).status == 201
    assert fa.api("GET", "/api/v1/accounts", _attenuate(fa, admin, "--expires", "1h")).status == 200


def test_host_caveats_on_the_api_are_checked_against_public_url_not_the_host_header(fa, admin):
    app_only = _attenuate(fa, admin, "--host", APP)
    r = fa.api("GET", "/api/v1/accounts", app_only, headers={"Host": APP})
    assert (r.status, r.json()) == (401, {"error": "invalid_token", "error_description": "host not allowed by token"})
    r = fa.api("POST", "/api/v1/accounts/bob/tokens", app_only, {"name": "spoof"}, headers={"Host": APP})
    assert r.status == 401
    auth_only = _attenuate(fa, admin, "--host", AUTH)
    assert fa.api("GET", "/api/v1/accounts", auth_only, headers={"Host": "elsewhere.test"}).status == 200


def test_exchange_carries_level_and_expiry_and_refuses_limits(fa, admin):
    r = fa.api("POST", "/api/v1/token", _attenuate(fa, admin, "--path", "/api/v1/token"))
    assert (r.status, r.json()) == (403, {"error": "forbidden", "error_description": "a token limited to hosts, "
                                          "paths or methods cannot be exchanged: a JWT could not carry those limits"})
    r = fa.api("POST", "/api/v1/token", _attenuate(fa, admin, "--method", "POST"))
    assert r.status == 403
    # Expiry: the JWT ends no later than the token (here 120 s, under jwt.lifetime's 600 s).
    from forwardauth.tokens import macaroon as mac

    short = mac.deserialize(admin).add_caveat(f"expires={int(time.time()) + 120}").add_caveat("level=password")
    r = fa.api("POST", "/api/v1/token", short.serialize())
    assert r.status == 200, r
    body = r.json()
    assert body["expires_in"] <= 120
    claims = verify(body["access_token"], jwks(fa), algorithm="ES256", issuer=f"http://{AUTH}:{fa.port}",
                    audience="forwardauth", now=time.time())
    assert claims["exp"] <= int(time.time()) + 121 and claims["level"] == "password"  # the narrowed level


# --- admin API: unlock, revoke-sessions, delete (audit finding: SPEC 7 gaps) --------------


def test_lock_unlock_and_revoke_sessions_through_the_api(fa, admin):
    fa.account("erin")
    tok = fa.token("erin", "--name", "one")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    r = fa.api("POST", "/api/v1/accounts/erin/lock", admin)
    assert (r.status, r.json()["status"]) == (200, "locked")
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)
    r = fa.api("POST", "/api/v1/accounts/erin/unlock", admin)
    assert (r.status, r.json()["status"]) == (200, "active")
    assert fa.decide("/api/x", tok).status == 401  # from before the lock: stays dead
    fresh = fa.token("erin", "--name", "two")
    assert eventually(lambda: fa.decide("/api/x", fresh).status == 200)
    # Sign out everywhere: the account itself may, for itself.
    r = fa.api("POST", "/api/v1/accounts/erin/revoke-sessions", fresh)
    assert r.status == 200 and r.json()["username"] == "erin" and r.json()["epoch"] <= time.time()
    assert eventually(lambda: fa.decide("/api/x", fresh).status == 401)
    bob = fa.token("bob", "--name", "nosy")
    r = eventually(lambda: (x := fa.api("POST", "/api/v1/accounts/erin/revoke-sessions", bob)).status != 401 and x)
    assert (r.status, r.json()) == (403, {"error": "forbidden",
                                          "error_description": "bob may not revoke the sessions of erin"})
    r = fa.api("POST", "/api/v1/accounts/erin/unlock", bob)
    assert (r.status, r.json()) == (403, {"error": "forbidden", "error_description": "only admins may unlock accounts"})
    r = fa.api("POST", "/api/v1/accounts/ghost/unlock", admin)
    assert (r.status, r.json()) == (404, {"error": "not_found", "error_description": "no account 'ghost'"})
    events = [(e["event"], e["user"]) for e in fa.audit()]
    for step in [("account_locked", "erin"), ("account_unlocked", "erin"), ("session_revoked", "erin")]:
        assert step in events, step


def test_deleting_an_account_leaves_nothing_for_a_namesake(fa, admin):
    r = fa.api("POST", "/api/v1/accounts", admin, {"username": "ledger", "kind": "system"})
    assert r.status == 201
    creds = {"host": "db", "port": 5432, "database": "ledger", "username": "ledger", "password": "pw-ledger"}
    assert fa.api("PUT", "/api/v1/accounts/ledger/dbcreds", admin, creds).status == 204
    tok = fa.api("POST", "/api/v1/accounts/ledger/tokens", admin, {}).json()["token"]
    assert eventually(lambda: fa.decide("/api/x", tok).status == 200)
    assert fa.api("DELETE", "/api/v1/accounts/ledger", admin).status == 204
    assert eventually(lambda: fa.decide("/api/x", tok).status == 401)
    assert fa.api("POST", "/api/v1/accounts", admin, {"username": "ledger", "kind": "system"}).status == 201
    new = fa.api("POST", "/api/v1/accounts/ledger/tokens", admin, {}).json()["token"]
    r = eventually(lambda: (x := fa.api("GET", "/api/v1/accounts/ledger/dbcreds", new)).status != 401 and x)
    assert (r.status, r.json()) == (404, {"error": "not_found", "error_description": "no database credentials for "
                                                                                     "ledger"})
    assert fa.decide("/api/x", tok).status == 401  # the old token stays dead for the namesake
    r = fa.api("DELETE", f"/api/v1/accounts/{'root'}", admin)
    assert (r.status, r.json()["error_description"]) == (403, "an admin cannot delete their own account")


# --- password exchange: the real client, and no typed unknown usernames -------------------


def test_password_exchange_audits_the_real_client_and_no_unknown_username(fa):
    r = fa.api("POST", "/api/v1/token", body={"username": "Typed-Password-1", "password": "x" * 12},
               headers={"X-Forwarded-For": "203.0.113.7"})
    assert (r.status, r.json()) == (401, {"error": "invalid_grant", "error_description": "wrong username or password"})
    line = [e for e in fa.audit() if e["event"] == "signin_failed"][-1]
    assert line["user"] is None and line["client"] == "203.0.113.7"
    assert "typed-password-1" not in (fa.workdir / "audit.log").read_text().lower()
    r = fa.api("POST", "/api/v1/token", body={"username": "bob", "password": "x" * 12},
               headers={"X-Forwarded-For": "198.51.100.9, 127.0.0.1"})
    assert r.status == 401
    line = [e for e in fa.audit() if e["event"] == "signin_failed"][-1]
    assert line["user"] == "bob" and line["client"] == "198.51.100.9" and line["reason"] == "token exchange: no_password"


# --- independent verification: plain joserfc against the served JWKS ---------------------


def plain_joserfc_claims(fa, token: str, audience: str) -> dict:
    """What an app that never heard of forwardauth does: fetch the JWKS over HTTP,
    decode with joserfc pinned to ES256, check iss, aud, exp, nbf, iat."""
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    raw = fa.api("GET", "/.well-known/jwks.json").json()
    keys = KeySet.import_key_set(raw)
    tok = jose_jwt.decode(token, keys, algorithms=["ES256"])
    assert tok.header["alg"] == "ES256" and tok.header["kid"] in {k["kid"] for k in raw["keys"]}
    jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": f"http://{AUTH}:{fa.port}"},
                               aud={"essential": True, "value": audience}, exp={"essential": True},
                               nbf={"essential": True}, iat={"essential": True}).validate(tok.claims)
    return dict(tok.claims)


def test_exchanged_jwt_and_assertion_verify_with_plain_joserfc(fa):
    from joserfc import jwt as jose_jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    tok = fa.token("backup", "--name", "plain")
    r = eventually(lambda: (x := fa.api("POST", "/api/v1/token", tok)).status == 200 and x)
    claims = plain_joserfc_claims(fa, r.json()["access_token"], "forwardauth")
    assert claims["sub"] == "backup" and claims["src"] == "token" and claims["exp"] - claims["iat"] <= 600
    assertion = fa.decide("/api/x", tok).header("X-Auth-Request-Jwt")
    claims = plain_joserfc_claims(fa, assertion, APP)
    assert claims["sub"] == "backup" and claims["level"] == "password"
    keys = KeySet.import_key_set(fa.api("GET", "/.well-known/jwks.json").json())
    with pytest.raises(JoseError):  # the same JWT is not accepted under another algorithm
        jose_jwt.decode(assertion, keys, algorithms=["HS256"])


def test_password_exchange_failures_count_per_real_client(tmp_path):
    """Audit finding 8: behind a proxy every client shared the proxy's counter,
    so one client's failures banned everyone. Now the client is the one the
    trusted proxy names in X-Forwarded-For."""
    fa = TokenServer(tmp_path, extra={"local": {"audit": str(tmp_path / "audit.log"), "scrypt": {"log_n": 10},
                                                "regulation": {"max_client_failures": 3, "max_failures": 50}}})
    with fa:
        def attempt(client: str, n: int):
            return fa.api("POST", "/api/v1/token", body={"username": f"someone{n}", "password": "x" * 12},
                          headers={"X-Forwarded-For": client})

        for n in range(3):
            assert attempt("203.0.113.7", n).status == 401
        r = attempt("203.0.113.7", 9)
        assert (r.status, r.json()["error"]) == (429, "slow_down")  # this client is banned
        r = attempt("198.51.100.9", 10)
        assert (r.status, r.json()["error"]) == (401, "invalid_grant")  # another client is not
