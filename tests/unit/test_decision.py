"""The decision: every outcome, from values only."""

import json

import pytest

from forwardauth.core.decision import Outcome, decide
from forwardauth.core.request import headers_nginx
from forwardauth.core.responses import answer
from forwardauth.core.session import Session

from .conftest import make_config

NOW = 1_800_000_000.0
CFG = make_config("""
policy:
  default: deny
  rules:
    - {paths: [/public/], allow: anonymous}
    - {paths: [/closed/], deny: true}
    - {name: admin, paths: [/admin/], level: mfa, max_age: 15m, groups: [admins], users: [root]}
    - {name: api, paths: ["/api/**"], methods_levels: {GET: password, POST: mfa}}
    - {name: app, paths: [/app/], level: password}
""")


def req(path, method="GET", accept="application/json"):
    return headers_nginx({"X-Original-URL": f"https://app.example.com{path}", "X-Original-Method": method,
                          "Accept": accept}, None, ())


def sess(level="password", groups=(), sub="alice", proven_ago=0.0):
    return Session("sid", sub, level, {level: NOW - proven_ago}, NOW - 100, NOW + 3600, NOW, groups=groups,
                   email=f"{sub}@example.com")


def outcome(path, session=None, method="GET"):
    return decide(req(path, method), session, CFG.policy, CFG.levels, NOW)


@pytest.mark.parametrize("path,session,method,expected", [
    ("/public/x", None, "GET", Outcome.ANONYMOUS),
    ("/closed/x", sess("hardware"), "GET", Outcome.DENIED),
    ("/nowhere", sess("hardware"), "GET", Outcome.DENIED),
    ("/app/", None, "GET", Outcome.UNAUTHENTICATED),
    ("/app/", sess("password"), "GET", Outcome.ALLOW),
    ("/app/", sess("hardware"), "GET", Outcome.ALLOW),
    ("/admin/", None, "GET", Outcome.UNAUTHENTICATED),
    ("/admin/", sess("password", ("admins",)), "GET", Outcome.INSUFFICIENT_LEVEL),
    ("/admin/", sess("mfa", ("admins",)), "GET", Outcome.ALLOW),
    ("/admin/", sess("mfa", (), sub="root"), "GET", Outcome.ALLOW),
    ("/admin/", sess("mfa", ("staff",)), "GET", Outcome.FORBIDDEN),
    ("/admin/", sess("password", ("staff",)), "GET", Outcome.FORBIDDEN),  # no point stepping up
    ("/admin/", sess("mfa", ("admins",), proven_ago=901), "GET", Outcome.INSUFFICIENT_LEVEL),
    ("/admin/", sess("hardware", ("admins",), proven_ago=60), "GET", Outcome.ALLOW),
    ("/api/x", sess("password"), "GET", Outcome.ALLOW),
    ("/api/x", sess("password"), "POST", Outcome.INSUFFICIENT_LEVEL),
    ("/api/x", sess("mfa"), "POST", Outcome.ALLOW),
    ("/api/x", sess("mfa"), "DELETE", Outcome.FORBIDDEN),
])
def test_outcomes(path, session, method, expected):
    assert outcome(path, session, method).outcome is expected


def test_stale_mfa_with_fresh_password_is_not_fresh_mfa():
    s = Session("sid", "alice", "mfa", {"mfa": NOW - 3600, "password": NOW - 5}, NOW - 4000, NOW + 3600, NOW,
                groups=("admins",))
    d = outcome("/admin/", s)
    assert d.outcome is Outcome.INSUFFICIENT_LEVEL
    assert d.reason == "rules[2] (admin) needs level mfa proven within 15m"


def test_allow_answer_has_identity_headers():
    d = outcome("/app/", sess("password", ("a", "b")))
    a = answer(CFG, d, req("/app/"), redirects=False)
    assert a.status == 200
    h = dict(a.headers)
    assert h["X-Auth-Request-User"] == "alice" and h["Remote-User"] == "alice"
    assert h["X-Auth-Request-Groups"] == "a,b" and h["Remote-Groups"] == "a,b"
    assert h["X-Auth-Request-Level"] == "password"
    assert h["X-Auth-Request-Email"] == "alice@example.com"


def test_identity_header_values_cannot_inject_lines():
    s = Session("sid", "eve\r\nX-Admin: 1", "password", {"password": NOW}, NOW, NOW + 60, NOW)
    a = answer(CFG, outcome("/app/", s), req("/app/"), redirects=False)
    assert dict(a.headers)["X-Auth-Request-User"] == "eveX-Admin: 1"


def test_insufficient_level_challenge_for_api_clients():
    d = outcome("/admin/", sess("password", ("admins",)))
    a = answer(CFG, d, req("/admin/"), redirects=True)
    h = dict(a.headers)
    assert a.status == 401
    assert h["WWW-Authenticate"] == (
        'Bearer realm="forwardauth", error="insufficient_user_authentication", '
        'error_description="Level mfa proven within 15m is required", acr_values="urn:acr:mfa urn:acr:mfa2", '
        "max_age=900")
    assert json.loads(a.body) == {"error": "insufficient_user_authentication",
                                  "error_description": "Level mfa proven within 15m is required",
                                  "required_level": "mfa", "max_age": 900}
    assert h["X-Forwardauth-Required-Level"] == "mfa"


def test_unauthenticated_api_client():
    a = answer(CFG, outcome("/app/"), req("/app/"), redirects=True)
    assert a.status == 401
    assert dict(a.headers)["WWW-Authenticate"] == 'Bearer realm="forwardauth"'
    assert json.loads(a.body)["error"] == "unauthorized"


def test_browser_redirect_on_traefik_and_401_on_nginx():
    r = req("/app/?q=1&x=%2F", accept="text/html,application/xhtml+xml")
    d = decide(r, None, CFG.policy, CFG.levels, NOW)
    start = "https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fapp%2F%3Fq%3D1%26x%3D%252F"
    t = answer(CFG, d, r, redirects=True)
    assert t.status == 302 and dict(t.headers)["Location"] == start
    n = answer(CFG, d, r, redirects=False)
    assert n.status == 401 and dict(n.headers)["X-Forwardauth-Location"] == start
    assert "Location" not in dict(n.headers)


def test_post_from_a_browser_is_not_redirected():
    r = req("/app/", method="POST", accept="text/html")
    a = answer(CFG, decide(r, None, CFG.policy, CFG.levels, NOW), r, redirects=True)
    assert a.status == 401


@pytest.mark.parametrize("path,session,status,body", [
    ("/closed/", None, 403, "403 Forbidden: denied by policy\n"),
    ("/admin/", sess("mfa", ("staff",)), 403, "403 Forbidden: your account is not allowed here\n"),
])
def test_forbidden_answers(path, session, status, body):
    a = answer(CFG, outcome(path, session), req(path), redirects=True)
    assert (a.status, a.body) == (status, body)


def test_groups_with_the_separator_or_controls_are_left_out(caplog):
    """An IdP group "x,admins" must not read as the groups "x" and "admins" to the app."""
    import logging

    s = sess("password", ("dev", "x,admins", "ops\r\nX-Admin: 1", "qa"), sub="smuggler")
    with caplog.at_level(logging.WARNING, "forwardauth"):
        a = answer(CFG, outcome("/app/", s), req("/app/"), redirects=False)
        answer(CFG, outcome("/app/", sess("password", ("x,admins",), sub="smuggler")), req("/app/"), False)
    h = dict(a.headers)
    assert h["X-Auth-Request-Groups"] == "dev,qa" and h["Remote-Groups"] == "dev,qa"
    warnings = [r for r in caplog.records if "groups left out" in r.getMessage()]
    assert len(warnings) == 1  # once per group, not once per request
    assert warnings[0].fields["groups"] == ["x,admins", "ops\r\nX-Admin: 1"]  # type: ignore[attr-defined]


def test_groups_separator_is_the_configured_one():
    cfg = make_config("headers: {groups_separator: '|'}\npolicy: {rules: [{level: password}]}\n")
    s = sess("password", ("a,b", "c|admins", "d"))
    a = answer(cfg, decide(req("/x"), s, cfg.policy, cfg.levels, NOW), req("/x"), redirects=False)
    assert dict(a.headers)["Remote-Groups"] == "a,b|d"


# --- every reading judged, the strictest wins (paths.py) ----------------------

CATCH_ALL = make_config("""
policy:
  default: deny
  rules:
    - {paths: [/public/], allow: anonymous}
    - {paths: [/closed/], deny: true}
    - {name: admin, paths: [/admin/], level: mfa, max_age: 15m}
    - {name: api, paths: ["/api/**"], methods_levels: {GET: password, POST: password, DELETE: mfa}}
    - {name: rest, level: password}
""")


@pytest.mark.parametrize("path,session,method,expected,level", [
    # Case: Express/ASP.NET route /ADMIN/ as /admin/; the reading that asks most wins.
    ("/ADMIN/x", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("/ADMIN/x", None, "GET", Outcome.UNAUTHENTICATED, "mfa"),
    ("/Admin/x", sess("mfa"), "GET", Outcome.ALLOW, "mfa"),
    ("/admin./x", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    # Path parameters, encoded separators, backslashes, a decoded `?`.
    ("/admin;x/y", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("/admin%2Fy", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("/admin%5Cy", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("/admin%3F/y", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("//admin/y", sess("password"), "GET", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    # A deny in any reading is a deny.
    ("/CLOSED/x", sess("hardware"), "GET", Outcome.DENIED, None),
    ("/closed;x/y", sess("hardware"), "GET", Outcome.DENIED, None),
    ("/closed%2Fy", sess("hardware"), "GET", Outcome.DENIED, None),
    # A public path spelt another way needs what that way needs.
    ("/Public/x", None, "GET", Outcome.UNAUTHENTICATED, "password"),
    ("/public/x", None, "GET", Outcome.ANONYMOUS, None),
    # POST named DELETE by ?_method= is judged as a DELETE too.
    ("/api/x?_method=DELETE", sess("password"), "POST", Outcome.INSUFFICIENT_LEVEL, "mfa"),
    ("/api/x?_method=delete", sess("mfa"), "POST", Outcome.ALLOW, "mfa"),
    ("/api/x", sess("password"), "POST", Outcome.ALLOW, "password"),
    ("/api/x?_method=DELETE", sess("password"), "GET", Outcome.ALLOW, "password"),  # only a POST is overridden
])
def test_strictest_reading_wins(path, session, method, expected, level):
    d = decide(req(path, method), session, CATCH_ALL.policy, CATCH_ALL.levels, NOW)
    assert d.outcome is expected, d.reason
    assert d.required_level == level


def test_two_asks_combine_to_the_highest_level_and_shortest_max_age():
    from forwardauth.core.decision import Decision, stricter

    a = Decision(Outcome.UNAUTHENTICATED, "a", required_level="password", max_age=3600)
    b = Decision(Outcome.UNAUTHENTICATED, "b", required_level="mfa", max_age=None)
    for x, y in ((a, b), (b, a)):
        s = stricter(x, y, CFG.levels)
        assert (s.outcome, s.required_level, s.max_age) == (Outcome.UNAUTHENTICATED, "mfa", 3600)


def test_allow_keeps_the_earlier_until():
    from forwardauth.core.decision import Decision, stricter

    a = Decision(Outcome.ALLOW, "a", until=100.0)
    b = Decision(Outcome.ANONYMOUS, "b")
    c = Decision(Outcome.ALLOW, "c", until=50.0)
    assert stricter(a, b, CFG.levels).until == 100.0
    assert stricter(a, c, CFG.levels).until == 50.0


def test_the_reading_that_decided_is_named():
    d = decide(req("/ADMIN/x"), sess("password"), CATCH_ALL.policy, CATCH_ALL.levels, NOW)
    assert d.reason == "rules[2] (admin) needs level mfa; the session has password (path read as /admin/x)"
    d = decide(req("/api/x?_method=DELETE", "POST"), sess("password"), CATCH_ALL.policy, CATCH_ALL.levels, NOW)
    assert d.reason == "rules[3] (api) needs level mfa; the session has password (method read as DELETE)"
