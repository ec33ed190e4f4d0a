"""Rule matching: hosts, paths, methods, networks, first match, default, the host index."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardauth.core.policy import Action, PathPattern, Policy, Rule, host_matches

from .conftest import make_config

ip = ipaddress.ip_address


def policy(yaml: str) -> Policy:
    return make_config(yaml).policy


P = policy("""
policy:
  default: deny
  rules:
    - {name: status, hosts: [status.example.com], allow: anonymous}
    - {name: admin, hosts: ["*.example.com"], paths: [/admin/], level: mfa}
    - {name: api-read, hosts: [app.example.com], paths: ["/api/*/items"], methods: [GET, HEAD], level: password}
    - {name: api-v, hosts: [app.example.com], paths: ["re:^/v[0-9]+/"], level: mfa}
    - {name: office, paths: [/intranet], networks: [10.0.0.0/8], level: password}
    - {name: blocked, paths: [/intranet], deny: true}
    - {name: app, hosts: [app.example.com], level: password}
""")


def name(host, path, method="GET", client=None):
    r = P.match(host, path, method, ip(client) if client else None)
    return r.name if r else None


@pytest.mark.parametrize("host,path,method,client,expected", [
    ("status.example.com", "/", "GET", None, "status"),
    ("status.example.com", "/admin/x", "GET", None, "status"),          # first match wins
    ("app.example.com", "/admin/", "GET", None, "admin"),
    ("app.example.com", "/admin", "GET", None, "admin"),                # prefix /admin/ covers /admin
    ("app.example.com", "/administrator", "GET", None, "app"),          # but not /administrator
    ("a.b.example.com", "/admin/x", "GET", None, "admin"),              # wildcard: one or more labels
    ("example.com", "/admin/x", "GET", None, None),                     # wildcard excludes the apex
    ("evilexample.com", "/admin/x", "GET", None, None),
    ("app.example.com", "/api/v1/items", "GET", None, "api-read"),
    ("app.example.com", "/api/v1/items", "POST", None, "app"),          # method not listed
    ("app.example.com", "/api/v1/x/items", "GET", None, "app"),         # * stays in one segment
    ("app.example.com", "/v2/thing", "GET", None, "api-v"),
    ("app.example.com", "/x/v2/thing", "GET", None, "app"),             # regex anchored at start
    ("other.test", "/intranet/a", "GET", "10.1.2.3", "office"),
    ("other.test", "/intranet/a", "GET", "192.0.2.1", "blocked"),
    ("other.test", "/intranet/a", "GET", None, "blocked"),              # no client: network rules skip
    ("other.test", "/", "GET", None, None),
])
def test_matching(host, path, method, client, expected):
    assert name(host, path, method, client) == expected


def test_default_action_is_deny_unless_configured():
    assert P.default is Action.DENY
    assert policy("policy: {default: anonymous, rules: []}").default is Action.ANONYMOUS
    assert policy("policy: {rules: []}").default is Action.DENY


def test_index_only_considers_rules_for_the_host():
    rules = [Rule(index=i, hosts=(f"h{i}.example.com",), action=Action.LEVEL, level="password")
             for i in range(5000)]
    rules.append(Rule(index=5000, action=Action.DENY))
    p = Policy.build(rules)
    assert [r.index for r in p.candidates("h42.example.com")] == [42, 5000]
    assert p.match("h42.example.com", "/", "GET", None).index == 42
    assert p.match("nope.example.com", "/", "GET", None).index == 5000


def test_candidates_keep_file_order_across_exact_wildcard_and_any():
    p = Policy.build([
        Rule(index=0, paths=(PathPattern.parse("/a"),), action=Action.DENY),
        Rule(index=1, hosts=("*.example.com",), action=Action.DENY),
        Rule(index=2, hosts=("x.example.com",), action=Action.DENY),
        Rule(index=3, action=Action.ANONYMOUS),
    ])
    assert [r.index for r in p.candidates("x.example.com")] == [0, 1, 2, 3]
    assert [r.index for r in p.candidates("y.example.com")] == [0, 1, 3]


def test_glob_double_star_crosses_segments():
    g = PathPattern.parse("/api/**")
    assert g.matches("/api/a/b/c")
    assert not g.matches("/apix")
    q = PathPattern.parse("/file?.txt")
    assert q.matches("/file1.txt") and not q.matches("/file/.txt")


@pytest.mark.parametrize("bad,message", [
    ("admin", "must start with '/' or 're:'"),
    ("re:(", "invalid regular expression"),
    ("/a[b", "unclosed '['"),
])
def test_bad_path_patterns(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        PathPattern.parse(bad)


labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
paths = st.lists(st.from_regex(r"[a-z0-9._-]{1,6}", fullmatch=True), max_size=5).map(lambda s: "/" + "/".join(s))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.one_of(st.none(), hosts, hosts.map(lambda h: "*." + h)),
                          st.one_of(st.none(), paths)), max_size=30),
       hosts, paths, st.sampled_from(["GET", "POST"]))
def test_index_agrees_with_a_linear_scan(specs, host, path, method):
    """The host index must find exactly the rule a naive first-match scan finds."""
    rules = [Rule(index=i, hosts=(h,) if h else (), paths=(PathPattern.parse(p),) if p else (),
                  action=Action.DENY) for i, (h, p) in enumerate(specs)]
    p = Policy.build(rules)
    linear = next((r for r in rules if (not r.hosts or host_matches(r.hosts[0], host))
                   and (not r.paths or r.paths[0].matches(path))), None)
    assert p.match(host, path, method, None) == linear


@given(hosts, hosts)
def test_wildcard_never_matches_a_mere_suffix(a, b):
    assert not host_matches("*." + a, b + a) or (b + a).endswith("." + a)


@pytest.mark.parametrize("glob,message", [
    ("/x[z-a]", "invalid glob '/x[z-a]': bad character range z-a"),
    ("/a[]", "invalid glob '/a[]': unterminated character set"),
    ("/a[", "unclosed '[' in glob '/a['"),
])
def test_bad_globs_are_value_errors(glob, message):
    with pytest.raises(ValueError) as exc:
        PathPattern.parse(glob)
    assert str(exc.value) == message


@pytest.mark.parametrize("glob,yes,no", [
    ("/a[!x]/b", "/ay/b", "/ax/b"),
    ("/f[0-9]", "/f7", "/fa"),
])
def test_glob_character_classes(glob, yes, no):
    p = PathPattern.parse(glob)
    assert p.matches(yes) and not p.matches(no)
