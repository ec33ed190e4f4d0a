"""The path rule: judge exactly the paths an app could route, refuse the rest.

forwardauth judges one reading of a request path; the proxy passes the path
on to the app as sent (nginx without a URI on proxy_pass, Caddy, Traefik for
all but plain `..`), and the app reads it its own way. aiohttp routes
`/admin/..%2fpublic/x` under `/admin/`, Werkzeug decodes it to
`/admin/../public/x` and also routes it under `/admin/`, a file server that
cleans paths serves `/public/x`, Tomcat drops `;jsessionid=...` from a
segment, IIS reads `\\` as `/` and ignores case, Express ignores case. Any
choice of one reading lets a request through on one path while the app
serves another (Authelia CVE-2021-32637, Pomerium CVE-2023-33189, Ory
Oathkeeper CVE-2026-33494).

So, for a raw path (the part of the request target before `?`):

- **Refused** (`AmbiguousPath`, answered 400), because no single reading is
  right for every app and no browser or HTTP client sends them (RFC 3986
  5.2.4: clients remove dot segments before sending):
  - a dot segment in any spelling: `.` or `..` raw or percent-encoded in any
    case, with `;params` after it, or next to `\\`, `%2F` or `%5C`; also any
    segment made only of dots and spaces (`...`, `.. `), which Windows servers
    trim to `..` or nothing;
  - a raw `#` (a fragment is never part of a request target; nginx passes it
    to the app, which may treat it as an ordinary character);
  - a `%` that is not followed by two hex digits (`%u002e`, `%zz`), which
    servers read in different ways;
  - double percent-encoding (`%252e`, `%2541`): what is left after one
    decoding is itself an escape, which an app that decodes twice would act on;
  - invalid UTF-8 after decoding (overlong `%c0%ae` included) and control
    characters (already refused by the request parser).
- **Judged under every reading, strictest wins** (`path_readings`), for
  spellings that real apps use and that a refusal would break:
  - `%2F` and `%5C` inside a segment (GitLab's API puts `group%2Fproject` in
    one segment) are read both as separators and as part of the segment;
  - `\\` both as a character and as `/`;
  - `;params` both kept and dropped from each segment;
  - a decoded `?` or `#` (`%3F`, `%23`) both as part of the path and as its end
    (an app that re-parses the decoded path);
  - repeated slashes both folded (Werkzeug, Go, nginx) and kept;
  - letter case both as sent and folded to lower case with trailing dots and
    spaces dropped from each segment (Express, ASP.NET and IIS route
    `/ADMIN/x` and `/admin./x` as `/admin/x`), so a rule for `/admin/`
    holds for every spelling of it.

The first reading is the primary one: percent-decoded, repeated slashes
folded, nothing else changed. It is what logs, `explain` and the redirect
back show; every reading is what the policy and token path limits judge.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote_to_bytes


class BadRequest(ValueError):
    """A malformed forwarded header. The message is safe to show to the client."""


class AmbiguousPath(BadRequest):
    """A path that an app could route as another path than any reading forwardauth judges."""


# Paths of these characters only (no upper case, `%`, `;` or `\\`), with no `//` and
# no segment that starts or ends with a dot, have one reading.
_PLAIN = re.compile(r"[a-z0-9\-_~!$&'()*+,=:@./]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEPARATOR_ESCAPE = re.compile(r"(%(?:2[Ff]|5[Cc]))")
_SLASHES = re.compile(r"/{2,}")
MAX_READINGS = 64


@lru_cache(maxsize=16384)
def path_readings(raw_path: str) -> tuple[str, ...]:
    """Every path an app could route `raw_path` as, the primary reading first.

    Raises AmbiguousPath for a path no set of readings can stand for, and
    BadRequest for a malformed one."""
    if not raw_path.startswith("/"):
        raise BadRequest("path must start with '/'")
    if (_PLAIN.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path and "./" not in raw_path
            and not raw_path.endswith(".")):
        return (raw_path,)
    if "#" in raw_path:
        raise AmbiguousPath("ambiguous path: '#' in the path")
    if _BAD_PERCENT.search(raw_path):
        raise AmbiguousPath("ambiguous path: '%' not followed by two hex digits")
    decoded = _decode(raw_path)
    if _ESCAPE.search(decoded):
        raise AmbiguousPath("ambiguous path: double percent-encoding")
    if _dotty(re.split(r"[/\\]", decoded)):
        raise AmbiguousPath("ambiguous path: dot segment")

    bases = [decoded]
    if _SEPARATOR_ESCAPE.search(raw_path):
        # %2F and %5C kept inside their segment, everything else decoded.
        bases.append("".join(_decode(part) if i % 2 == 0 else part.upper()
                             for i, part in enumerate(_SEPARATOR_ESCAPE.split(raw_path))))
    # Repeated slashes folded (the primary reading) and, where there are any, kept.
    readings = [_fold(b) for b in bases] + [b for b in bases if "//" in b]
    for transform in (_backslashes, _params, _query_end, _casefold):
        readings += [t for r in readings if (t := transform(r)) is not None]
    out = tuple(dict.fromkeys(readings))
    if len(out) > MAX_READINGS:  # pragma: no cover - 2**6 at most by construction
        raise AmbiguousPath("ambiguous path: too many readings")
    return out


def normalise_path(raw_path: str) -> str:
    """The primary reading of `raw_path` (see path_readings). Raises BadRequest."""
    return path_readings(raw_path)[0]


def _decode(raw: str) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8 after percent-decoding") from None
    except UnicodeEncodeError:  # a lone surrogate: a caller's own str (found by bench/fuzz.py)
        raise BadRequest("path is not valid text") from None
    if not text.isprintable():
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise BadRequest("path contains control characters")
    return text


def _dotty(segments: list[str]) -> bool:
    """True when a segment is a dot segment in any reading: `.`, `..`, `..;x`,
    `..?x` (a decoded `?` or `#` ends the path for an app that parses the
    decoded path again), or only dots and spaces (`...`, `.. `: trimmed to a
    dot segment by Windows servers)."""
    for seg in segments:
        if "." not in seg:
            continue
        for s in (seg, re.split(r"[;?#]", seg, maxsplit=1)[0]):
            if s and "." in s and not s.strip(". "):
                return True
    return False


def _fold(path: str) -> str:
    return _SLASHES.sub("/", path)


def _backslashes(path: str) -> str | None:
    return _fold(path.replace("\\", "/")) if "\\" in path else None


def _params(path: str) -> str | None:
    if ";" not in path:
        return None
    return "/".join(seg.split(";", 1)[0] for seg in path.split("/"))


def _query_end(path: str) -> str | None:
    cut = min((i for i in (path.find("?"), path.find("#")) if i != -1), default=-1)
    return (path[:cut] or "/") if cut != -1 else None


def casefold_path(path: str) -> str:
    """`path` as a case-insensitive, Windows-style server routes it: lower case,
    trailing dots and spaces dropped from each segment."""
    return "/".join(seg.rstrip(". ") for seg in path.lower().split("/"))


def _casefold(path: str) -> str | None:
    folded = casefold_path(path)
    return folded if folded != path else None
