"""Turning a decision into the answer a proxy understands. Pure: values in, values out.

Every answer of the decision endpoints is written here, and only here: the
decision's, the RFC 6750 `invalid_token` challenge for a refused bearer
token, the 400 for a malformed request, the 403 for a peer that is not a
trusted proxy and the 503s of the state store's health (which of them
applies is decided in one place too, authorize.StorePolicy).

The proxies differ only in what they do with a 302 from the auth endpoint:
Traefik and Caddy pass it to the browser, nginx's auth_request cannot, so
nginx gets a 401 and its `error_page` does the redirect, using the
`X-Forwardauth-Location` header sent here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, replace
from urllib.parse import quote

from forwardauth.core.config import Config
from forwardauth.core.credentials import ABSENT, Credential, Source, Status
from forwardauth.core.decision import Decision, Outcome
from forwardauth.core.durations import format_duration
from forwardauth.core.request import OriginalRequest
from forwardauth.core.session import Session

log = logging.getLogger("forwardauth")

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

IDENTITY_HEADERS = {
    "x-auth-request": {
        "user": "X-Auth-Request-User",
        "email": "X-Auth-Request-Email",
        "groups": "X-Auth-Request-Groups",
        "level": "X-Auth-Request-Level",
        "name": "X-Auth-Request-Name",
        "auth_time": "X-Auth-Request-Auth-Time",
    },
    "remote": {
        "user": "Remote-User",
        "email": "Remote-Email",
        "groups": "Remote-Groups",
        "name": "Remote-Name",
    },
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"
    until: float = math.inf  # the same inputs get this same answer until then (see memo)


def clean(value: str) -> str:
    """Header-safe: control characters (CR, LF, ...) removed."""
    return value if value.isprintable() else _UNSAFE.sub("", value)


_IDENTITY_CACHE: dict[int, tuple[Session, object, tuple[tuple[str, str], ...]]] = {}


def identity_headers(cfg: Config, session: Session) -> tuple[tuple[str, str], ...]:
    """Memoised per session object: opened sessions are cached, so a user's
    headers are built once, not on every request. The entry keeps the session
    and the header config it was built for and is used only when both match."""
    hit = _IDENTITY_CACHE.get(id(session))
    if hit is not None and hit[0] is session and hit[1] is cfg.headers:
        return hit[2]
    out = tuple(_identity_headers(cfg, session))
    if len(_IDENTITY_CACHE) >= 20_000:
        _IDENTITY_CACHE.clear()
    _IDENTITY_CACHE[id(session)] = (session, cfg.headers, out)
    return out


_REPORTED: set[str] = set()  # groups already logged as dropped (bounded)


def header_groups(cfg: Config, session: Session) -> str:
    """The groups joined with `headers.groups_separator`, leaving out any group
    that contains the separator or a control character: the app splits the
    header on the separator, so an identity provider's group "x,admins" would
    otherwise read as the two groups "x" and "admins". Dropped groups are
    logged once each."""
    sep = cfg.headers.groups_separator
    kept = [g for g in session.groups if g and sep not in g and g.isprintable()]
    if len(kept) != len(session.groups):
        dropped = [g for g in session.groups if g not in kept and g not in _REPORTED]
        if dropped:
            if len(_REPORTED) > 1000:
                _REPORTED.clear()
            _REPORTED.update(dropped)
            log.warning("groups left out of the identity headers: they contain the separator or a control "
                        "character", extra={"fields": {"user": session.sub, "separator": sep,
                                                       "groups": [g[:80] for g in dropped[:10]]}})
    return sep.join(kept)


def _identity_headers(cfg: Config, session: Session) -> list[tuple[str, str]]:
    values = {
        "user": session.sub,
        "email": session.email or "",
        "groups": header_groups(cfg, session),
        "level": session.level,
        "name": session.name or "",
        "auth_time": str(int(session.auth_time)),
    }
    out = []
    for s in cfg.headers.sets:
        for key, header in IDENTITY_HEADERS[s].items():
            out.append((header, clean(values[key])))
    return out


def start_url(cfg: Config, target: str) -> str:
    return f"{cfg.server.public_url}/oauth2/start?rd={quote(target, safe='')}"


def challenge(cfg: Config, decision: Decision) -> str:
    realm = cfg.server.realm
    if decision.outcome is not Outcome.INSUFFICIENT_LEVEL or decision.required_level is None:
        return f'Bearer realm="{realm}"'
    parts = [
        f'Bearer realm="{realm}"',
        'error="insufficient_user_authentication"',
        f'error_description="{_description(decision)}"',
    ]
    acr = cfg.levels[decision.required_level].acr
    if acr:
        parts.append(f'acr_values="{" ".join(acr)}"')
    if decision.max_age is not None:
        parts.append(f"max_age={int(decision.max_age)}")
    return ", ".join(parts)


def _description(decision: Decision) -> str:
    if decision.max_age is not None:
        return f"Level {decision.required_level} proven within {format_duration(decision.max_age)} is required"
    return f"Level {decision.required_level} is required"


def answer(cfg: Config, decision: Decision, req: OriginalRequest, redirects: bool,
           credential: Credential = ABSENT) -> Answer:
    """`redirects`: the proxy passes a 302 to the browser (Traefik, Caddy).
    `credential`: a refused bearer token turns "please sign in" into RFC
    6750's `invalid_token`, saying which check refused it."""
    ans = _answer(cfg, decision, req, redirects)
    if (decision.outcome is Outcome.UNAUTHENTICATED and credential.source is Source.TOKEN
            and credential.status is Status.REFUSED):
        return invalid_token(cfg, ans, decision, credential.reason)
    return ans


def invalid_token(cfg: Config, ans: Answer, decision: Decision, why: str) -> Answer:
    """The challenge and (for a JSON 401) the body say what was wrong with the
    token: `why` names a caveat or a check, never the token."""
    headers = tuple((k, v) for k, v in ans.headers if k != "WWW-Authenticate")
    ans = replace(ans, headers=headers + (
        ("WWW-Authenticate", f'Bearer realm="{cfg.server.realm}", error="invalid_token", error_description="{why}"'),))
    if ans.status == 401 and ans.content_type == "application/json":
        body = {"error": "invalid_token", "error_description": f"The bearer token was refused: {why}",
                "required_level": decision.required_level}
        ans = replace(ans, body=json.dumps(body) + "\n")
    return ans


def _answer(cfg: Config, decision: Decision, req: OriginalRequest, redirects: bool) -> Answer:
    o = decision.outcome
    if o is Outcome.ALLOW:
        assert decision.session is not None
        # No body: nginx does not read an auth_request answer's body, and a
        # body left unread makes it close the upstream connection.
        return Answer(200, identity_headers(cfg, decision.session), "", until=decision.until)
    if o is Outcome.ANONYMOUS:
        return Answer(200, (), "")
    if o is Outcome.DENIED:
        return Answer(403, (), "403 Forbidden: denied by policy\n")
    if o is Outcome.FORBIDDEN:
        return Answer(403, (), "403 Forbidden: your account is not allowed here\n")

    location = start_url(cfg, req.url)
    headers: list[tuple[str, str]] = [("X-Forwardauth-Location", location)]
    if decision.required_level:
        headers.append(("X-Forwardauth-Required-Level", decision.required_level))
    if redirects and req.is_browser_navigation:
        return Answer(302, tuple(headers) + (("Location", location),), "")
    headers.append(("WWW-Authenticate", challenge(cfg, decision)))
    body: dict[str, str | int | None]
    if o is Outcome.INSUFFICIENT_LEVEL:
        body = {
            "error": "insufficient_user_authentication",
            "error_description": _description(decision),
            "required_level": decision.required_level,
        }
        if decision.max_age is not None:
            body["max_age"] = int(decision.max_age)
    else:
        body = {"error": "unauthorized", "error_description": "Sign-in required",
                "required_level": decision.required_level}
    return Answer(401, tuple(headers), json.dumps(body) + "\n", "application/json")


def bad_request(message: str, via_nginx: bool = False) -> Answer:
    """400 for a malformed or ambiguous request. nginx's auth_request turns
    every status but 2xx, 401 and 403 into a 500, so to nginx it is a 403
    saying 400 in `X-Forwardauth-Status` (the shipped snippet answers the
    client 400 with `X-Forwardauth-Error`; a snippet that does not know these
    headers still refuses, with 403). The message is one of this code's own
    fixed texts, never a value from the request."""
    body = f"400 Bad Request: {message}\n"
    if via_nginx:
        return Answer(403, (("X-Forwardauth-Status", "400"), ("X-Forwardauth-Error", message)), body)
    return Answer(400, (), body)


def unavailable_via_nginx(ans: Answer) -> Answer:
    """A 503 (the state store's outage policy) for nginx: auth_request would turn
    it into its own 500, so it is a 403 saying 503 in `X-Forwardauth-Status`,
    the reason in `X-Forwardauth-Error` (this code's own text: ASCII, one
    line). The shipped snippet answers the client 503 with Retry-After; a
    snippet that does not know these headers still refuses, with 403."""
    reason = ans.body.strip().removeprefix("503 Service Unavailable: ")
    return Answer(403, ans.headers + (("X-Forwardauth-Status", "503"), ("X-Forwardauth-Error", reason)), ans.body)


def untrusted_peer(peer: str | None) -> Answer:
    """403 for a peer that is not one of `server.trusted_proxies` (its address
    as the server saw it, or None when it is not an address)."""
    return Answer(403, (), f"403 Forbidden: {peer} is not in server.trusted_proxies\n")


NOT_READ_YET = Answer(
    503, (("Retry-After", "5"),),
    "503 Service Unavailable: the state store has not been read yet, so revoked sessions cannot be told "
    "apart; signed-in requests are refused until it has\n")


def unavailable(down_for: float, grace: float, what: str) -> Answer:
    """503 once the state store has been unreachable past the grace: `what`
    says which requests are refused ("bearer tokens are", ...)."""
    since = "never reached" if down_for == math.inf else f"unreachable for {format_duration(int(down_for))}"
    return Answer(
        503, (("Retry-After", "5"),),
        f"503 Service Unavailable: the state store is {since} (grace {format_duration(grace)}); {what} refused\n")
