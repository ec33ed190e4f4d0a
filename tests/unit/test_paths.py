"""The path rule (forwardauth/paths.py): refuse what no reading can stand for,
judge every reading of the rest."""

import posixpath
import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from forwardauth.core.paths import AmbiguousPath, BadRequest, casefold_path, normalise_path, path_readings

DOT = "ambiguous path: dot segment"
HASH = "ambiguous path: '#' in the path"
PERCENT = "ambiguous path: '%' not followed by two hex digits"
DOUBLE = "ambiguous path: double percent-encoding"


@pytest.mark.parametrize("raw,message", [
    # Dot segments, in every spelling an app could resolve.
    ("/admin/../public/x", DOT),
    ("/admin/..%2fpublic/x", DOT),
    ("/admin/..%2Fpublic/x", DOT),
    ("/admin/%2e%2e/public/x", DOT),
    ("/admin/%2E%2e/public/x", DOT),
    ("/admin/.%2e/public/x", DOT),
    ("/admin/%2e./public/x", DOT),
    ("/admin/..;/public/x", DOT),
    ("/admin/..;jsessionid=1/public/x", DOT),
    ("/admin/%2e%2e%3b/public/x", DOT),
    ("/admin\\..\\public\\x", DOT),
    ("/admin/..%5cpublic/x", DOT),
    ("/admin%5c..%5cpublic", DOT),
    ("/admin/./x", DOT),
    ("/admin/%2e/x", DOT),
    ("/admin/.", DOT),
    ("/admin/..", DOT),
    ("/..", DOT),
    ("/admin/.../x", DOT),
    ("/admin/..%20/x", DOT),
    ("/admin/.%20./x", DOT),
    ("/public%2f..%2fadmin/", DOT),
    # A fragment is never part of a request target.
    ("/public/x#/../../admin/x", HASH),
    ("/public#", HASH),
    # Escapes that servers read differently.
    ("/admin/%u002e%u002e/x", PERCENT),
    ("/a%zz", PERCENT),
    ("/a%2", PERCENT),
    ("/a%", PERCENT),
    ("/admin/%252e%252e/public", DOUBLE),
    ("/admin%252fx", DOUBLE),
    ("/%2541dmin", DOUBLE),
    ("/a%2525", DOUBLE),
])
def test_refused(raw, message):
    with pytest.raises(AmbiguousPath) as exc:
        path_readings(raw)
    assert str(exc.value) == message


@pytest.mark.parametrize("raw,message", [
    ("/%ff", "path is not valid UTF-8 after percent-decoding"),
    ("/admin/%c0%ae%c0%ae/x", "path is not valid UTF-8 after percent-decoding"),  # overlong "."
    ("/a%00b", "path contains control characters"),
    ("/a%0d%0ab", "path contains control characters"),
    ("a", "path must start with '/'"),
])
def test_malformed(raw, message):
    with pytest.raises(BadRequest) as exc:
        path_readings(raw)
    assert not isinstance(exc.value, AmbiguousPath)
    assert str(exc.value) == message


@pytest.mark.parametrize("raw,readings", [
    ("/", ("/",)),
    ("/a/b/", ("/a/b/",)),
    ("/.well-known/jwks.json", ("/.well-known/jwks.json",)),
    ("/a.b/c..d/x.", ("/a.b/c..d/x.", "/a.b/c..d/x")),
    ("/caf%C3%A9", ("/café",)),
    # Case: as sent, and as Express/ASP.NET/IIS route it.
    ("/ADMIN/x", ("/ADMIN/x", "/admin/x")),
    ("/admin./x", ("/admin./x", "/admin/x")),
    ("/admin%20/x", ("/admin /x", "/admin/x")),
    # Encoded separators: as separators and as part of the segment.
    ("/api/projects/group%2fproject", ("/api/projects/group/project", "/api/projects/group%2Fproject",
                                       "/api/projects/group%2fproject")),
    ("/a%5cb", ("/a\\b", "/a%5Cb", "/a/b", "/a%5cb")),
    # Backslash: a character, or a separator.
    ("/admin\\x", ("/admin\\x", "/admin/x")),
    # Path parameters: kept, or dropped from each segment (Tomcat, Spring).
    ("/admin;x/", ("/admin;x/", "/admin/")),
    ("/admin;jsessionid=abc/panel", ("/admin;jsessionid=abc/panel", "/admin/panel")),
    ("/admin%3bx/", ("/admin;x/", "/admin/")),
    # A decoded ? or #: part of the path, or its end.
    ("/admin%3F/x", ("/admin?/x", "/admin")),
    ("/public/x%23/y", ("/public/x#/y", "/public/x")),
    # Repeated slashes: folded (Werkzeug, Go, nginx) and kept.
    ("//admin///x", ("/admin/x", "//admin///x")),
])
def test_readings(raw, readings):
    assert path_readings(raw) == readings
    assert normalise_path(raw) == readings[0]


def test_casefold_path():
    assert casefold_path("/Admin. /X.") == "/admin/x"


# --- properties ---------------------------------------------------------------

SEGMENT_PARTS = st.sampled_from(["a", "B", "admin", "ADMIN", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\",
                                 ";", ";x=1", "%3b", "%20", " ", "%25", "%252e", "%3f", "%23", "#", "?", "%41",
                                 "%c3%a9", "é", "~", "-", "_", "//", "%00", "%u002e", "%"])
RAW = st.lists(st.lists(SEGMENT_PARTS, max_size=4).map("".join), min_size=1, max_size=6).map(
    lambda segs: "/" + "/".join(segs))


def _werkzeug(raw: str) -> str:
    """Decoded once, repeated slashes merged (Werkzeug's default)."""
    return re.sub("/{2,}", "/", unquote(raw))


def _cleaner(raw: str) -> str:
    """Go's http.FileServer: decode, then path.Clean."""
    p = posixpath.normpath(unquote(raw))
    return "/" + p.lstrip("/") if p != "." else "/"


@settings(max_examples=3000, deadline=None)
@given(RAW)
@example("/admin/..%2fpublic/x")
@example("/public/x#/../../admin/x")
def test_accepted_paths_have_one_meaning_per_app(raw):
    """Whatever is accepted: no reading has a dot segment, a path cleaner
    routes it as a reading forwardauth judges, and so do Werkzeug, a
    parameter-dropping server and a case-insensitive one."""
    try:
        readings = path_readings(raw)
    except BadRequest:
        return
    assert readings[0].startswith("/") and "//" not in readings[0]
    for r in readings:
        assert all(seg not in (".", "..") for seg in re.split(r"[/\\]", r)), r
    assert "#" not in raw
    # A cleaner drops a trailing slash; a prefix rule for /x/ matches /x too.
    assert _cleaner(raw).rstrip("/") in {r.rstrip("/") for r in readings}, (raw, readings)
    w = _werkzeug(raw)
    assert w in readings
    assert casefold_path(w) in readings or casefold_path(w) == w
    assert "/".join(s.split(";", 1)[0] for s in w.split("/")) in readings


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_refused_or_read(tail):
    try:
        readings = path_readings("/" + tail)
    except BadRequest:
        return
    assert 1 <= len(readings) <= 64


@pytest.mark.parametrize("path", ["/a/\udcff", "/api/2F\ud800x;p=1/a./a"])
def test_a_lone_surrogate_is_a_bad_request_not_a_crash(path):
    """Found by bench/fuzz.py: a str with a lone surrogate (what a caller's own decoding with
    surrogateescape makes of a raw byte) was a UnicodeEncodeError out of percent-decoding."""
    with pytest.raises(BadRequest) as exc:
        path_readings(path)
    assert str(exc.value) == "path is not valid text"
