"""The audit log: one JSON line per authentication event.

Separate from the operational log on purpose: it is the record an operator
(or an incident review) reads to answer "who signed in, from where, and what
was refused". Every line has the same fields, in the same order:

    time, event, user, client, host, path, level, reason, request_id

The signature of `emit` is the whole vocabulary: there is no free-form
field, so a password, code, secret, cookie or token cannot be passed in by
mistake. `path` is the path only: a query string (which may carry tokens)
is cut off. Lines are written with one `write` on a file opened for append,
so lines from several worker processes never interleave.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
import time
from typing import Mapping

EVENTS = frozenset(
    {
        "signin_ok",  # password accepted, session issued
        "signin_failed",  # wrong password, unknown user, system account, malformed input
        "signin_refused",  # banned (regulation), locked account, bad CSRF token
        "step_up",  # a local factor raised the session's level
        "totp_failed",  # wrong or replayed code
        "totp_enrolled",
        "totp_reset",
        "signout",
        "session_revoked",
        "decision_denied",  # the proxy asked and the answer was no (403)
        "account_created",
        "account_updated",
        "account_locked",
        "account_unlocked",
        "account_deleted",
        "token_issued",
        "token_used",
        "token_revoked",
        "token_exchanged",  # a token or a password exchanged for a short-lived JWT
        "dbcreds_set",  # service-account database credentials written (never their value)
        "dbcreds_read",
    }
)

FIELDS = ("time", "event", "user", "client", "host", "path", "level", "reason", "request_id")
_MAX = 512
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(headers: Mapping[str, str]) -> str:
    """The proxy's X-Request-Id when it looks like one, else a new one."""
    rid = headers.get("X-Request-Id") or headers.get("X-Request-ID") or ""
    return rid if _REQUEST_ID_RE.match(rid) else secrets.token_hex(8)


def _text(v: object) -> str | None:
    if v is None:
        return None
    s = str(v)
    return s if len(s) <= _MAX else s[: _MAX - 3] + "..."


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int((now % 1) * 1000):03d}Z"


class AuditLog:
    """Writes audit lines to `target`: "stdout", "stderr" or a file path."""

    def __init__(self, target: str = "stdout"):
        self.target = target
        self._fd: int | None = None
        self._lock = threading.Lock()
        if target not in ("stdout", "stderr"):
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def line(
        self,
        event: str,
        *,
        user: str | None = None,
        client: str | None = None,
        host: str | None = None,
        path: str | None = None,
        level: str | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        now: float | None = None,
    ) -> str:
        """The serialised line for an event (no newline). Raises ValueError for an unknown event."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        if path is not None:
            path = path.split("?", 1)[0].split("#", 1)[0]
        record = {
            "time": _timestamp(time.time() if now is None else now),
            "event": event,
            "user": _text(user),
            "client": _text(client),
            "host": _text(host),
            "path": _text(path),
            "level": _text(level),
            "reason": _text(reason),
            "request_id": _text(request_id),
        }
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))

    def emit(self, event: str, **fields: str | float | None) -> str:
        """Write one event; returns the line written. Never raises for I/O:
        a full disk must not turn a sign-in into a crash (it is reported on
        stderr instead)."""
        text = self.line(event, **fields)  # type: ignore[arg-type]
        data = (text + "\n").encode("ascii")
        try:
            with self._lock:
                if self._fd is not None:
                    os.write(self._fd, data)
                else:
                    stream = sys.stdout if self.target == "stdout" else sys.stderr
                    stream.write(text + "\n")
                    stream.flush()
        except OSError as exc:
            sys.stderr.write(f"forwardauth: audit log {self.target}: write failed: {exc.strerror}\n")
        return text

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def for_context(ctx) -> AuditLog:  # noqa: ANN001 - server.Context (not imported: no cycle)
    """The audit log of a running app, shared by every part (`ctx.extensions["audit"]`),
    made from the `local.audit` setting on first use."""
    log = ctx.extensions.get("audit")
    if log is None:
        from forwardauth.runtime import resolve_path
        from forwardauth.signin.settings import settings

        cfg = ctx.runtime.config
        target = settings(cfg).audit
        if target not in ("stdout", "stderr"):
            target = str(resolve_path(cfg, target))
        log = ctx.extensions.setdefault("audit", AuditLog(target))
    return log
