"""Pure rules of approval: new requests, reading a device's answer, judging
it, and the ETag of a user's pending set. No I/O, `now` passed in."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from forwardauth.devices import words
from forwardauth.state.records import ApprovalRequest, ApprovalState, Device

MAX_USER_AGENT = 256
MAX_NAME = 64
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


def _clean(text: str | None, limit: int) -> str:
    """Printable and short: these strings end up on a phone's screen."""
    text = _CONTROL_RE.sub("", text or "")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def new_request(user: str, host: str, path: str, client: str | None, user_agent: str | None, level: str,
                now: float, ttl: float) -> ApprovalRequest:
    right = words.phrase()
    return ApprovalRequest(
        id=secrets.token_urlsafe(16),  # 22 characters
        user=user,
        host=_clean(host, 253),
        path=_clean(path.split("?", 1)[0], 512),
        client=client,
        user_agent=_clean(user_agent, MAX_USER_AGENT),
        level=level,
        created=now,
        expires=now + ttl,
        phrase=right,
        choices=words.choices(right),
    )


def valid_request_id(text: str) -> bool:
    return isinstance(text, str) and bool(_REQUEST_ID_RE.match(text))


# --- the ETag of a user's pending set ------------------------------------------

def etag(pending: Iterable[ApprovalRequest]) -> str:
    """A strong ETag naming the set of pending request ids (order does not
    matter). It changes when a request appears or goes away, and says nothing
    about what the requests are."""
    ids = sorted(r.id for r in pending)
    digest = hashlib.sha256("\n".join(ids).encode()).digest()[:12]
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'


def etag_matches(if_none_match: str | None, current: str) -> bool:
    """RFC 9110 If-None-Match, weak comparison: a list of tags, each maybe W/,
    or `*` (which matches whatever exists, so the poll waits). No header, or a
    header that names nothing we made: no match, the poll answers at once."""
    if not if_none_match:
        return False
    value = if_none_match.strip()
    if value == "*":
        return True
    bare = current[2:] if current.startswith("W/") else current
    for tag in value.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == bare:
            return True
    return False


# --- what a device sends -------------------------------------------------------

class Decision(str, enum.Enum):
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True)
class Answer:
    decision: Decision
    phrase: str | None


def read_answer(body: Any) -> Answer | str:
    """The JSON body of POST /api/v1/device/requests/{id}, or the message of a
    400. A missing phrase on approve is bad input, not a wrong pick."""
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    unknown = sorted(set(body) - {"decision", "phrase"})
    if unknown:
        return f"unknown field: {unknown[0]}"
    decision = body.get("decision")
    if decision not in ("approve", "deny"):
        return "decision: must be \"approve\" or \"deny\""
    phrase = body.get("phrase")
    if phrase is not None and (not isinstance(phrase, str) or not 1 <= len(phrase) <= 200):
        return "phrase: must be a string of 1 to 200 characters"
    if decision == "approve" and phrase is None:
        return "phrase: required to approve (the phrase the browser shows)"
    return Answer(Decision(decision), phrase)


def read_pairing(body: Any) -> tuple[str, str] | str:
    """(code as typed, device name) from POST /api/v1/device/pair's body, or the message of a 400."""
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    unknown = sorted(set(body) - {"code", "name"})
    if unknown:
        return f"unknown field: {unknown[0]}"
    code, name = body.get("code"), body.get("name")
    if not isinstance(code, str) or not code:
        return "code: required (the pairing code the devices page shows)"
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or _CONTROL_RE.search(name):
        return f"name: must be 1 to {MAX_NAME} printable characters"
    return code, name.strip()


# --- judging -------------------------------------------------------------------

class Verdict(str, enum.Enum):
    APPROVED = "approved"
    DENIED = "denied"  # the device said deny
    WRONG_PHRASE = "wrong_phrase"  # approve with a phrase that is not the browser's: denied
    NOT_PENDING = "not_pending"  # decided, cancelled or expired already


def judge(request: ApprovalRequest, answer: Answer, now: float) -> Verdict:
    """What a device's answer does to a request. The caller has checked that
    the device belongs to the request's user (a request of another user is
    "not found", not judged)."""
    if not request.live(now):
        return Verdict.NOT_PENDING
    if answer.decision is Decision.DENY:
        return Verdict.DENIED
    picked = words.normalise(answer.phrase or "").encode()
    if hmac.compare_digest(picked, words.normalise(request.phrase).encode()):
        return Verdict.APPROVED
    return Verdict.WRONG_PHRASE


def resolution(verdict: Verdict) -> tuple[ApprovalState, str | None]:
    """The state a verdict writes, and its reason."""
    if verdict is Verdict.APPROVED:
        return ApprovalState.APPROVED, None
    if verdict is Verdict.WRONG_PHRASE:
        return ApprovalState.DENIED, "wrong_phrase"
    if verdict is Verdict.DENIED:
        return ApprovalState.DENIED, "denied_on_device"
    raise ValueError(verdict)


# --- what is shown -----------------------------------------------------------------

def device_view(d: Device) -> dict[str, Any]:
    """A device as pages, the admin API and the CLI show it (never its hash)."""
    return {"id": d.id, "user": d.user, "name": d.name, "created": d.created, "last_seen": d.last_seen}


def request_view(r: ApprovalRequest) -> dict[str, Any]:
    """One entry of the long-poll's list: the choices, not which one is right."""
    return {"id": r.id, "host": r.host, "path": r.path, "client": r.client, "user_agent": r.user_agent,
            "level": r.level, "created": r.created, "expires": r.expires, "phrases": list(r.choices)}
