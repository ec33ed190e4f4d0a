"""Where a browser may be sent after signing in (the `rd` parameter).

An open redirect on an authentication server turns it into a phishing tool
("sign in at the real site, land on the fake one"), so the rule is an allow
list and everything unusual is refused rather than repaired:

- an absolute `http://` or `https://` URL whose host is the public_url's host,
  an exact host from `server.allowed_redirect_domains`, or, for an entry
  `.example.com`, example.com itself or any subdomain of it; any port;
- a path `/x` on forwardauth's own site, resolved against `public_url`.

Refused: anything with characters outside printable ASCII (whitespace,
control characters, unicode look-alikes, IDN written in unicode), a
backslash anywhere (browsers read `\\` as `/`), scheme-relative `//host`,
userinfo (`user@host`), percent-encoded slashes, backslashes or whitespace
at the start of a path, other schemes (`javascript:`, `data:`), malformed
hosts and ports. A refused target is replaced by `{public_url}/`, never
passed through in any form. Pure: no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MAX_TARGET = 4096
_PRINTABLE_RE = re.compile(r"^[\x21-\x7e]+$")
_ABSOLUTE_RE = re.compile(r"^(?P<scheme>https?)://(?P<authority>[^/?#]*)(?P<rest>[/?#].*)?$", re.IGNORECASE | re.S)
_AUTHORITY_RE = re.compile(
    r"^(?P<host>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decodings(text: str) -> list[str]:
    """`text` as a server decoding it once, twice or three times would see it."""
    out = [text]
    for _ in range(3):
        out.append(unquote(out[-1]))
    return out


def _path_smuggles(path: str) -> bool:
    """A path that some decoder could turn into `//host` or `/\\host`, or that hides a backslash."""
    for d in _decodings(path):
        stripped = d.lstrip(" \t")
        if "\\" in d or stripped.startswith(("//", "/ ")) or d.startswith("/ "):
            return True
    return False


def _host_allowed(host: str, own_host: str, allowed: tuple[str, ...]) -> bool:
    if host == own_host:
        return True
    for entry in allowed:
        entry = entry.lower()
        if entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return True
        elif host == entry:
            return True
    return False


def _public_host(public_url: str) -> str:
    m = _ABSOLUTE_RE.match(public_url)
    if not m:
        return ""
    a = _AUTHORITY_RE.match(m.group("authority").lower())
    return a.group("host") if a else ""


def check_redirect(target: str | None, public_url: str, allowed: tuple[str, ...]) -> str | None:
    """The URL to send the browser to, or None when `target` is refused."""
    if not target or len(target) > MAX_TARGET or not _PRINTABLE_RE.match(target) or "\\" in target:
        return None
    if any(_CONTROL.search(d) for d in _decodings(target)):
        return None  # %00, %0d%0a, %09 ... in any decoding
    base = public_url.rstrip("/")
    if target.startswith("/"):
        if target.startswith("//") or _path_smuggles(re.split(r"[?#]", target, maxsplit=1)[0]):
            return None
        return base + target
    m = _ABSOLUTE_RE.match(target)
    if not m:
        return None  # javascript:, data:, "http:/x", "https:evil", relative "x", ...
    scheme = m.group("scheme").lower()
    authority = m.group("authority").lower()
    a = _AUTHORITY_RE.match(authority)
    if not a:
        return None  # userinfo, %-encoded or empty host, bad port, trailing dot
    port = a.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    host = a.group("host")
    if not _host_allowed(host.strip("[]"), _public_host(base).strip("[]"), allowed):
        return None
    rest = m.group("rest") or "/"
    if rest.startswith("/") and _path_smuggles(re.split(r"[?#]", rest, maxsplit=1)[0]):
        return None
    return f"{scheme}://{authority}{rest}"


def safe_redirect(target: str | None, public_url: str, allowed: tuple[str, ...]) -> str:
    """`check_redirect`, or `{public_url}/` when the target is refused or absent."""
    return check_redirect(target, public_url, allowed) or public_url.rstrip("/") + "/"
