"""The original request, rebuilt from a proxy's forwarded headers and normalised.

Each proxy describes the request it is asking about in its own headers; this
module turns them into one `OriginalRequest` and refuses anything malformed.
The path is never resolved into another path: `paths.path_readings` gives
every path an app could route it as (all of them are judged, the strictest
wins) and refuses the spellings no set of readings can stand for (dot
segments in any spelling, `#`, double encoding); see paths.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from forwardauth.core.paths import AmbiguousPath, BadRequest, normalise_path, path_readings

__all__ = ["AmbiguousPath", "BadRequest", "OriginalRequest", "normalise_path", "path_readings", "build",
           "from_url", "parse_host", "parse_method", "parse_uri", "client_address", "TrustedNetworks",
           "NGINX", "FORWARDED", "headers_nginx", "headers_forwarded", "Convention"]

MAX_URL = 8192
MAX_HOST = 253
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_CTL_RE = re.compile(r"[\x00-\x20\x7f]")


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OriginalRequest:
    method: str
    scheme: str
    host: str  # lower case, no port, no trailing dot
    port: int | None
    path: str  # the primary reading, for messages (see paths.py)
    raw_uri: str  # path + query as sent, for redirects back
    client: IPAddress | None
    accept: str = ""
    # Every reading of the path an app could route, `path` first; every
    # method the app could act on (a POST with `?_method=DELETE` is also a
    # DELETE to Symfony and Laravel), `method` first. All are judged.
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.paths:
            object.__setattr__(self, "paths", (self.path,))
        if not self.methods:
            object.__setattr__(self, "methods", (self.method,))

    @property
    def url(self) -> str:
        default = {"http": 80, "https": 443}[self.scheme]
        netloc = _bracket(self.host) if self.port in (None, default) else f"{_bracket(self.host)}:{self.port}"
        return f"{self.scheme}://{netloc}{self.raw_uri}"

    @property
    def is_browser_navigation(self) -> bool:
        """GET/HEAD that accepts HTML: a person in a browser, who can be redirected."""
        return self.method in ("GET", "HEAD") and "text/html" in self.accept


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@lru_cache(maxsize=4096)
def parse_host(value: str) -> tuple[str, int | None]:
    """Host header value -> (host, port). Raises BadRequest."""
    value = value.strip()
    if not value or len(value) > MAX_HOST + 8:
        raise BadRequest("missing or oversized host")
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            raise BadRequest("malformed host")
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest("malformed host") from None
        if rest:
            if not rest.startswith(":"):
                raise BadRequest("malformed host")
            port = _port(rest[1:])
        return host.lower(), port
    host, colon, p = value.partition(":")
    if colon:
        port = _port(p)
    host = host.lower()
    if not _HOST_RE.match(host):
        raise BadRequest("malformed host")
    return host.rstrip("."), port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadRequest("malformed port")
    return int(text)


def parse_method(value: str | None) -> str:
    if value is None or not _METHOD_RE.match(value.strip().upper()):
        raise BadRequest("missing or malformed method header")
    return value.strip().upper()


def ascii_target(value: str, what: str) -> str:
    r"""`value` with every non-ASCII byte percent-encoded. Raises BadRequest.

    A request target is ASCII (RFC 9112), but nginx's $request_uri and Caddy's
    {http.request.uri} pass on whatever raw bytes the client sent, and the
    server hands header bytes over as UTF-8 with undecodable bytes as lone
    surrogates. Encoding them gives the form a browser would have sent, so
    `/caf\xc3\xa9` is judged as `/caf%C3%A9` (= `/café`), and a stray `\xff`
    becomes `%FF`, which a path refuses (not UTF-8) and a query keeps."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid text") from None
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def parse_uri(value: str | None) -> str:
    """An origin-form request target (`/path?query`). Raises BadRequest."""
    if not value:
        raise BadRequest("missing original URI header")
    if len(value) > MAX_URL:
        raise BadRequest("original URI too long")
    value = ascii_target(value, "original URI")
    if len(value) > MAX_URL:
        raise BadRequest("original URI too long")
    if not value.startswith("/") or _CTL_RE.search(value):
        raise BadRequest("original URI must be a path like /a/b?c")
    if "#" in value:
        raise AmbiguousPath("ambiguous path: '#' in the path")
    return value


@lru_cache(maxsize=8192)
def parse_ip(text: str) -> IPAddress:
    """ipaddress.ip_address, memoised: the same few proxy and client addresses recur."""
    return ipaddress.ip_address(text)


_UNSEEN: Any = object()


class TrustedNetworks:
    """The trusted proxies, with membership memoised per address (the same
    few proxy addresses ask again and again; hashing the network list per
    call, as a plain lru_cache key would, costs more than the check)."""

    def __init__(self, networks: Iterable[IPNetwork]):
        self.networks = tuple(networks)
        self._seen: dict[object, bool] = {}
        self._peers: dict[str | None, IPAddress | None] = {}

    def peer(self, remote: str | None) -> IPAddress | None:
        """The peer's address when it is a trusted proxy, else None; memoised by
        the address text the server gives (hashing a str is cheaper than an
        ipaddress object)."""
        found = self._peers.get(remote, _UNSEEN)  # one lookup: this runs on every decision
        if found is not _UNSEEN:
            return found
        addr: IPAddress | None
        try:
            addr = parse_ip(remote or "")
        except ValueError:
            addr = None
        if addr is not None and not any(addr in net for net in self.networks):
            addr = None
        if len(self._peers) >= 8192:
            self._peers.clear()
        self._peers[remote] = addr
        return addr

    def __contains__(self, addr: object) -> bool:
        found = self._seen.get(addr)
        if found is None:
            found = any(addr in net for net in self.networks)
            if len(self._seen) >= 8192:
                self._seen.clear()
            self._seen[addr] = found
        return found


Trusted = TrustedNetworks | tuple[IPNetwork, ...]  # the trusted proxies, memoised or as configured


def is_trusted(addr: IPAddress, trusted: Trusted) -> bool:
    if isinstance(trusted, TrustedNetworks):
        return addr in trusted
    return any(addr in net for net in trusted)


def client_address(
    forwarded_for: str | None, peer: IPAddress | None, trusted: Trusted
) -> IPAddress | None:
    """The client: the rightmost X-Forwarded-For entry that is not a trusted proxy.

    Entries left of the first untrusted hop are client-controlled and ignored.
    """
    if not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",")]
    for hop in reversed(hops):
        try:
            addr = parse_ip(hop.strip("[]"))
        except ValueError:
            raise BadRequest("malformed X-Forwarded-For") from None
        if not is_trusted(addr, trusted):
            return addr
    try:
        return parse_ip(hops[0].strip("[]"))
    except ValueError:
        raise BadRequest("malformed X-Forwarded-For") from None


def client_of(remote: str | None, forwarded_for: str | None,
              trusted: TrustedNetworks | tuple[IPNetwork, ...]) -> IPAddress | None:
    """The client of a request made to forwardauth itself (its pages, its API):
    the peer, or, when the peer is a trusted proxy, the client it names in
    X-Forwarded-For (a malformed header: the peer)."""
    try:
        peer = parse_ip(remote or "")
    except ValueError:
        return None
    if not is_trusted(peer, trusted):
        return peer
    try:
        return client_address(forwarded_for, peer, trusted)
    except BadRequest:
        return peer


def build(
    *,
    method: str | None,
    scheme: str | None,
    host: str | None,
    uri: str | None,
    forwarded_for: str | None,
    peer: IPAddress | None,
    trusted: Trusted,
    accept: str | None,
) -> OriginalRequest:
    """Validate each part and assemble the original request."""
    scheme = (scheme or "http").strip().lower()
    if scheme not in ("http", "https"):
        raise BadRequest("forwarded proto must be http or https")
    raw_uri = parse_uri(uri)
    if not host:
        raise BadRequest("missing original host header")
    h, port = parse_host(host)
    raw_path, _, query = raw_uri.partition("?")
    paths = path_readings(raw_path)
    m = parse_method(method)
    if accept is not None and len(accept) > 2048:
        accept = accept[:2048]
    return OriginalRequest(
        method=m,
        scheme=scheme,
        host=h,
        port=port,
        path=paths[0],
        raw_uri=raw_uri,
        client=client_address(forwarded_for, peer, trusted),
        accept=accept or "",
        paths=paths,
        methods=_method_overrides(m, query),
    )


_OVERRIDABLE = ("PUT", "PATCH", "DELETE")


def _method_overrides(method: str, query: str) -> tuple[str, ...]:
    """`method`, and for a POST the method a `_method` query parameter names.

    Symfony and Laravel (and Rails for forms) let a POST act as PUT, PATCH or
    DELETE through a `_method` parameter; Symfony and Laravel read it from
    the query string too. The proxies strip the X-HTTP-Method-Override
    headers, but the query reaches the app, so the named method is judged as
    well and the stricter answer wins. A `_method` in a form body cannot be
    seen here: README says how to write rules for such apps."""
    if method != "POST" or "_method" not in query:
        return (method,)
    out = [method]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "_method":
            named = value.strip().upper()
            if not named or not named.isalpha() or len(named) > 16:
                raise BadRequest("malformed _method parameter")
            if named not in out:
                out.append(named)
    return tuple(out)


def from_url(url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], uri) from an absolute URL like nginx's X-Original-URL."""
    if len(url) > MAX_URL:
        raise BadRequest("original URL too long")
    url = ascii_target(url, "original URL")
    if len(url) > MAX_URL:
        raise BadRequest("original URL too long")
    if _CTL_RE.search(url):
        raise BadRequest("original URL contains spaces or control characters")
    if "#" in url:
        # A request target has no fragment: nginx's $request_uri holds a raw
        # `#` as sent, and the app gets it too, so it is not cut off here.
        raise AmbiguousPath("ambiguous path: '#' in the path")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadRequest("original URL is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise BadRequest("original URL must be an absolute http(s) URL")
    uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.netloc, uri


NGINX_FIELDS = ("X-Original-URL", "X-Original-URI", "X-Original-Method", "X-Forwarded-Proto", "Host",
                "X-Forwarded-For", "X-Real-IP", "Accept")
FORWARDED_FIELDS = ("X-Forwarded-Method", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Uri",
                    "X-Forwarded-For", "Accept")


def nginx_fields(values: tuple[str | None, ...], peer: IPAddress | None, trusted: Trusted) -> OriginalRequest:
    """nginx auth_request: X-Original-URL, or X-Original-URI + Host; X-Original-Method.

    Without X-Original-URL the host is the Host header only, never
    X-Forwarded-Host: auth_request passes every header the client sent on to
    the subrequest, so a snippet that sets X-Original-URI and Host but not
    X-Forwarded-Host would let the client choose the host it is judged on.
    X-Forwarded-Proto only gives the scheme of the redirect back after sign-in.

    `values` are the NGINX_FIELDS headers in order (None when absent): the
    server reads exactly these, and remembers parsed requests by them."""
    url, uri, method, proto, host, fwd_for, real_ip, accept = values
    if url:
        scheme, host, uri = from_url(url)
    else:
        scheme = proto or "http"
    return build(method=method, scheme=scheme, host=host, uri=uri, forwarded_for=fwd_for or real_ip, peer=peer,
                 trusted=trusted, accept=accept)


def forwarded_fields(values: tuple[str | None, ...], peer: IPAddress | None, trusted: Trusted) -> OriginalRequest:
    """Traefik forwardAuth and Caddy forward_auth: the FORWARDED_FIELDS headers in order."""
    method, proto, host, uri, fwd_for, accept = values
    return build(method=method, scheme=proto, host=host, uri=uri, forwarded_for=fwd_for, peer=peer,
                 trusted=trusted, accept=accept)


@dataclass(frozen=True)
class Convention:
    """How one kind of proxy describes the original request."""

    fields: tuple[str, ...]
    parse: Callable[[tuple[str | None, ...], IPAddress | None, Trusted], OriginalRequest]

    def values(self, headers: Mapping[str, str]) -> tuple[str | None, ...]:
        return tuple(map(headers.get, self.fields))

    def __call__(self, headers: Mapping[str, str], peer: IPAddress | None, trusted: Trusted) -> OriginalRequest:
        return self.parse(self.values(headers), peer, trusted)


headers_nginx = NGINX = Convention(NGINX_FIELDS, nginx_fields)
headers_forwarded = FORWARDED = Convention(FORWARDED_FIELDS, forwarded_fields)
