"""Rebuilding the original request from forwarded headers; every malformed form."""

import ipaddress

import pytest

from forwardauth.core.request import BadRequest, client_address, headers_forwarded, headers_nginx

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
PEER = ipaddress.ip_address("127.0.0.1")


def nginx(**h):
    return headers_nginx(h, PEER, TRUSTED)


def test_nginx_original_url():
    r = nginx(**{"X-Original-URL": "https://App.Example.com:8443/a/b?x=1", "X-Original-Method": "post",
                 "X-Forwarded-For": "203.0.113.7"})
    assert (r.method, r.scheme, r.host, r.port, r.path, r.raw_uri) == ("POST", "https", "app.example.com", 8443,
                                                                      "/a/b", "/a/b?x=1")
    assert str(r.client) == "203.0.113.7"
    assert r.url == "https://app.example.com:8443/a/b?x=1"


def test_nginx_uri_and_host():
    r = nginx(**{"X-Original-URI": "/x?y", "X-Original-Method": "GET", "Host": "app.example.com",
                 "X-Forwarded-Proto": "https"})
    assert r.url == "https://app.example.com/x?y"
    assert r.client == PEER


def test_nginx_host_comes_from_host_only_never_x_forwarded_host():
    """auth_request hands the client's headers to the subrequest: a snippet that sets
    X-Original-URI and Host must not let a client-sent X-Forwarded-Host pick the host."""
    r = nginx(**{"X-Original-URI": "/admin/", "X-Original-Method": "GET", "Host": "app.example.com",
                 "X-Forwarded-Host": "status.example.com"})
    assert (r.host, r.url) == ("app.example.com", "http://app.example.com/admin/")
    with pytest.raises(BadRequest) as exc:
        nginx(**{"X-Original-URI": "/x", "X-Original-Method": "GET", "X-Forwarded-Host": "status.example.com"})
    assert str(exc.value) == "missing original host header"
    r = nginx(**{"X-Original-URL": "https://app.example.com/a", "X-Original-Method": "GET", "Host": "fa:4180",
                 "X-Forwarded-Host": "status.example.com", "X-Forwarded-Proto": "http"})
    assert r.url == "https://app.example.com/a"


def test_traefik_headers():
    r = headers_forwarded({"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
                           "X-Forwarded-Host": "app.example.com", "X-Forwarded-Uri": "/p",
                           "Accept": "text/html,*/*"}, PEER, TRUSTED)
    assert r.url == "https://app.example.com/p" and r.is_browser_navigation


@pytest.mark.parametrize("headers,message", [
    ({}, "missing original URI header"),
    ({"X-Original-URI": "/x", "Host": "a.test"}, "missing or malformed method header"),
    ({"X-Original-URL": "app.example.com/x", "X-Original-Method": "GET"}, "original URL must be an absolute http(s) URL"),
    ({"X-Original-URL": "ftp://a.test/x", "X-Original-Method": "GET"}, "original URL must be an absolute http(s) URL"),
    ({"X-Original-URL": "https://u:p@a.test/x", "X-Original-Method": "GET"}, "original URL must be an absolute http(s) URL"),
    ({"X-Original-URL": "https://a.test/x y", "X-Original-Method": "GET"}, "original URL contains spaces or control characters"),
    ({"X-Original-URL": "https://a.test/" + "a" * 9000, "X-Original-Method": "GET"}, "original URL too long"),
    ({"X-Original-URI": "/" + "a" * 9000, "X-Original-Method": "GET", "Host": "a.test"}, "original URI too long"),
    ({"X-Original-URI": "x", "X-Original-Method": "GET", "Host": "a.test"}, "original URI must be a path like /a/b?c"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GE T", "Host": "a.test"}, "missing or malformed method header"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET"}, "missing original host header"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET", "Host": "bad_host!"}, "malformed host"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET", "Host": "a.test:99999"}, "malformed port"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET", "Host": "[::1"}, "malformed host"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET", "Host": "a.test", "X-Forwarded-Proto": "gopher"},
     "forwarded proto must be http or https"),
    ({"X-Original-URI": "/x", "X-Original-Method": "GET", "Host": "a.test", "X-Forwarded-For": "nope"},
     "malformed X-Forwarded-For"),
    ({"X-Original-URI": "/%ff", "X-Original-Method": "GET", "Host": "a.test"},
     "path is not valid UTF-8 after percent-decoding"),
])
def test_nginx_bad_headers(headers, message):
    with pytest.raises(BadRequest) as exc:
        nginx(**headers)
    assert str(exc.value) == message


def test_client_address_skips_trusted_hops_and_ignores_spoofed_left_entries():
    ip = ipaddress.ip_address
    assert client_address("6.6.6.6, 203.0.113.9, 10.1.1.1", PEER, TRUSTED) == ip("203.0.113.9")
    assert client_address("10.0.0.5", PEER, TRUSTED) == ip("10.0.0.5")  # all trusted: leftmost
    assert client_address(None, PEER, TRUSTED) == PEER
    assert client_address("[2001:db8::1]", PEER, TRUSTED) == ip("2001:db8::1")


# Raw bytes past ASCII: nginx's $request_uri and Caddy's {http.request.uri} pass
# on what the client sent; the server gives header bytes as UTF-8 with lone
# surrogates for the bytes that are not. They are judged percent-encoded.
@pytest.mark.parametrize("uri,path,raw_uri", [
    ("/caf\xe9", "/café", "/caf%C3%A9"),
    ("/?q=\udcff", "/", "/?q=%FF"),
    ("/a?\udcc3\udca9", "/a", "/a?%C3%A9"),
])
def test_non_ascii_targets_are_percent_encoded(uri, path, raw_uri):
    r = headers_forwarded({"X-Forwarded-Method": "GET", "X-Forwarded-Host": "a.test", "X-Forwarded-Uri": uri},
                          PEER, TRUSTED)
    assert (r.path, r.raw_uri, r.url) == (path, raw_uri, f"http://a.test{raw_uri}")
    n = nginx(**{"X-Original-URL": f"https://a.test{uri}", "X-Original-Method": "GET"})
    assert (n.path, n.raw_uri) == (path, raw_uri)


@pytest.mark.parametrize("headers,message", [
    ({"X-Original-URL": "https://a.test/x\udcff", "X-Original-Method": "GET"},
     "path is not valid UTF-8 after percent-decoding"),
    ({"X-Original-URI": "/x\udcff", "X-Original-Method": "GET", "Host": "a.test"},
     "path is not valid UTF-8 after percent-decoding"),
    ({"X-Original-URI": "/x\ud800", "X-Original-Method": "GET", "Host": "a.test"}, "original URI is not valid text"),
    ({"X-Original-URL": "https://a.test/x\ud800", "X-Original-Method": "GET"}, "original URL is not valid text"),
    ({"X-Original-URL": "https://\xe9.test/", "X-Original-Method": "GET"}, "malformed host"),
    ({"X-Original-URI": "/" + "\xe9" * 3000, "X-Original-Method": "GET", "Host": "a.test"}, "original URI too long"),
])
def test_non_ascii_refusals(headers, message):
    with pytest.raises(BadRequest) as exc:
        nginx(**headers)
    assert str(exc.value) == message


def test_forwarded_uri_with_bad_byte_is_refused():
    with pytest.raises(BadRequest) as exc:
        headers_forwarded({"X-Forwarded-Method": "GET", "X-Forwarded-Host": "a.test", "X-Forwarded-Uri": "/x\udcff"},
                          PEER, TRUSTED)
    assert str(exc.value) == "path is not valid UTF-8 after percent-decoding"
