"""The long-poll of `GET /api/v1/device/requests`, as a pure state machine.

A poll starts with the ETag the device sent (If-None-Match) and a deadline
(now + poll_timeout). Each time it *looks* at a snapshot of the store (at
the start, and after every wake-up) it either answers or says until when to
wait:

  device no longer valid                     -> 401, at once
  ETag of the live pending set != the sent one -> 200, new ETag, the list
  deadline reached                            -> 304, the same ETag
  otherwise                                   -> wait until the deadline or
                                                 the first pending request's
                                                 expiry, whichever is first

A request appearing or going away (decided, cancelled) wakes the poll through
the hub; a request *expiring* wakes nobody, which is why the wait ends at the
first expiry: the next look no longer counts it, the ETag differs, 200.

Two more endings: the client went away (no answer is written: nobody reads
it), and a newer poll of the same device took over (304: the older
connection is most likely dead, and if not, its device just polls again).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forwardauth.devices.approvals import etag, etag_matches
from forwardauth.state.records import ApprovalRequest


@dataclass(frozen=True)
class Snapshot:
    """What a poll looks at: is the device still valid, and the user's requests."""

    device_ok: bool
    requests: tuple[ApprovalRequest, ...]


@dataclass(frozen=True)
class Reply:
    status: int  # 200, 304 or 401
    etag: str | None = None
    requests: tuple[ApprovalRequest, ...] = ()


@dataclass(frozen=True)
class Wait:
    until: float  # look again at this time at the latest


class Phase(enum.Enum):
    WAITING = "waiting"
    ANSWERED = "answered"
    ENDED = "ended"  # the client went away: nothing to answer


class LongPoll:
    """One poll. Not thread-safe, not async: the driver (hub.py) feeds it."""

    __slots__ = ("sent", "deadline", "phase", "current")

    def __init__(self, if_none_match: str | None, now: float, timeout: float) -> None:
        self.sent = if_none_match
        self.deadline = now + timeout
        self.phase = Phase.WAITING
        self.current: str | None = None  # the ETag at the last look

    def look(self, snapshot: Snapshot, now: float) -> Reply | Wait:
        if self.phase is not Phase.WAITING:
            raise RuntimeError(f"look() on a poll that is {self.phase.value}")
        if not snapshot.device_ok:
            return self._answer(Reply(401))
        live = tuple(sorted((r for r in snapshot.requests if r.live(now)), key=lambda r: (r.created, r.id)))
        self.current = etag(live)
        if not etag_matches(self.sent, self.current):
            return self._answer(Reply(200, self.current, live))
        if now >= self.deadline:
            return self._answer(Reply(304, self.current))
        return Wait(min([self.deadline] + [r.expires for r in live]))

    def superseded(self) -> Reply:
        """A newer poll of the same device took over this one."""
        if self.phase is not Phase.WAITING:
            raise RuntimeError(f"superseded() on a poll that is {self.phase.value}")
        return self._answer(Reply(304, self.current))

    def client_gone(self) -> None:
        if self.phase is Phase.WAITING:
            self.phase = Phase.ENDED

    def _answer(self, reply: Reply) -> Reply:
        self.phase = Phase.ANSWERED
        return reply
