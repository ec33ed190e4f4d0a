"""The `rd` rule: an allow list of hosts; anything odd is refused, never repaired."""

import pytest

from forwardauth.core.redirects import check_redirect, safe_redirect

PUBLIC = "https://auth.example.com"
ALLOWED_DOMAINS = (".example.com", "app.test", "127.0.0.1")
DEFAULT = "https://auth.example.com/"
REFUSED = None  # safe_redirect answers DEFAULT

TABLE = [
    # (target, expected result); REFUSED: check_redirect says None, safe_redirect says DEFAULT
    ("https://app.example.com/x?y=1#z", "https://app.example.com/x?y=1#z"),
    ("https://example.com/", "https://example.com/"),
    ("https://deep.a.b.example.com/", "https://deep.a.b.example.com/"),
    ("https://app.example.com:8443/p", "https://app.example.com:8443/p"),
    ("http://app.test/", "http://app.test/"),
    ("http://app.test:8080/a%20b?q=a%20b", "http://app.test:8080/a%20b?q=a%20b"),
    ("HTTPS://APP.EXAMPLE.COM/Path", "https://app.example.com/Path"),
    ("https://auth.example.com/account", "https://auth.example.com/account"),
    ("https://app.example.com", "https://app.example.com/"),
    ("https://app.example.com?x=1", "https://app.example.com?x=1"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
    ("/local/page?x=1", "https://auth.example.com/local/page?x=1"),
    ("/", "https://auth.example.com/"),
    # refused: other hosts and look-alikes
    ("https://evil.test/", REFUSED),
    ("https://evilexample.com/", REFUSED),
    ("https://example.com.evil.test/", REFUSED),
    ("https://app.test.evil.test/", REFUSED),
    ("https://sub.app.test/", REFUSED),  # app.test is an exact host, not a domain
    ("https://app.example.com./", REFUSED),  # trailing dot
    ("https://xn--exmple-cua.com/", REFUSED),
    ("https://ex\u0430mple.com/", REFUSED),  # Cyrillic a
    ("https://app.example.com\u3002evil.test/", REFUSED),  # ideographic full stop
    ("\uff0f\uff0fevil.test", REFUSED),  # fullwidth slashes
    # refused: scheme-relative, backslashes, malformed schemes
    ("//evil.test/", REFUSED),
    ("///evil.test/", REFUSED),
    ("/\\evil.test/", REFUSED),
    ("\\\\evil.test", REFUSED),
    ("https:\\\\evil.test", REFUSED),
    ("https:/evil.test", REFUSED),
    ("https:evil.test", REFUSED),
    ("https:///evil.test", REFUSED),
    ("relative/path", REFUSED),
    ("?next=1", REFUSED),
    # refused: userinfo and authority tricks
    ("https://app.example.com@evil.test/", REFUSED),
    ("https://user:pw@app.example.com/", REFUSED),
    ("https://evil.test#@app.example.com/", REFUSED),
    ("https://evil.test?@app.example.com/", REFUSED),
    ("https://evil.test\\@app.example.com/", REFUSED),
    ("https://evil.test%2f.example.com/", REFUSED),
    ("https://evil.test%40app.example.com/", REFUSED),
    ("https://app.example.com:99999/", REFUSED),
    ("https://app.example.com:0/", REFUSED),
    ("https://app.example.com:/", REFUSED),
    ("https://[::1]/", REFUSED),
    # refused: encoded or whitespace-smuggled slashes and control characters
    ("/%2f%2fevil.test", REFUSED),
    ("/%2Fevil.test", REFUSED),
    ("/%5cevil.test", REFUSED),
    ("/%252f%252fevil.test", REFUSED),  # double-encoded
    ("/%09/evil.test", REFUSED),
    ("/ /evil.test", REFUSED),
    (" https://app.example.com/", REFUSED),
    ("https://app.example.com/\t", REFUSED),
    ("https://app.example.com/%0d%0aSet-Cookie:x=1", REFUSED),
    ("https://app.example.com/%00", REFUSED),
    ("https://app.example.com//evil.test/", REFUSED),
    ("\x00https://app.example.com/", REFUSED),
    # refused: other schemes
    ("javascript:alert(1)", REFUSED),
    ("JavaScript://app.example.com/%0aalert(1)", REFUSED),
    ("data:text/html,<script>alert(1)</script>", REFUSED),
    ("ftp://app.example.com/", REFUSED),
    ("vbscript:msgbox(1)", REFUSED),
    # refused: empty and oversized
    ("", REFUSED),
    (None, REFUSED),
    ("https://app.example.com/" + "a" * 5000, REFUSED),
]


@pytest.mark.parametrize("target, expected", TABLE, ids=[repr(t)[:60] for t, _ in TABLE])
def test_redirect_table(target, expected):
    assert check_redirect(target, PUBLIC, ALLOWED_DOMAINS) == expected
    assert safe_redirect(target, PUBLIC, ALLOWED_DOMAINS) == (DEFAULT if expected is REFUSED else expected)


def test_table_is_big_enough():
    assert sum(1 for _, e in TABLE if e is REFUSED) >= 30
    assert sum(1 for _, e in TABLE if e is not REFUSED) >= 10


def test_refused_target_never_leaks_into_the_result():
    for target, expected in TABLE:
        if expected is REFUSED and target:
            assert "evil" not in safe_redirect(target, PUBLIC, ALLOWED_DOMAINS)


def test_public_url_with_trailing_slash_and_no_domains():
    assert safe_redirect("/x", "https://auth.example.com/", ()) == "https://auth.example.com/x"
    assert safe_redirect("https://app.example.com/", "https://auth.example.com", ()) == DEFAULT
    assert safe_redirect("https://auth.example.com:8443/", "https://auth.example.com:8443", ()) == \
        "https://auth.example.com:8443/"
