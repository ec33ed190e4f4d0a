"""The audit log: one JSON line per authentication event.

Separate from the operational log on purpose: it is the record an operator
(or an incident review) reads to answer "who signed in, from where, and what
was refused". Every line has the same fields, in the same order:

    time, event, user, client, host, path, level, reason, request_id

The signature of `emit` is the whole vocabulary: there is no free-form
field, so a password, code, secret, cookie or token cannot be passed in by
mistake. `path` is the path only: a query string (which may carry tokens)
is cut off. Lines are written with one `write` on a file opened for append,
under an exclusive `flock` shared by every writer of the file (the worker
processes, the CLI), so lines never interleave, and a short write (a full
disk) is cut back to the last whole line: a line is never torn, and the
next one never glued to a fragment. Writing never raises into a request,
and the decision endpoints only queue their lines (see `AuditLog`).

When the sink fails (full disk, unwritable, gone), auth events ARE dropped:
forwardauth keeps answering, since every app behind it would stop
otherwise. Never silently: each lost line is counted
(`forwardauth_audit_lines_lost_total{reason}` on /metrics, `LOST` here),
and the log says when losing starts and how many were lost when it stops.
A file deleted or renamed away (logrotate) is noticed before the next
write and made anew at its path; SIGHUP reopens it too (`reopen`).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Mapping

from forwardauth.core.config import Config
from forwardauth.core.errors import ConfigError
from forwardauth.core.runtime import resolve_path

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
        "webauthn_registered",  # a passkey or security key added (reason: its name, model, flags)
        "webauthn_renamed",
        "webauthn_removed",  # by the user, an administrator, or with the account
        "webauthn_failed",  # an answer refused (reason: which rule), or a ceremony refused before it
        "webauthn_locked",  # its signature counter went backwards: a possible clone, locked
        "device_paired",  # a device exchanged a pairing code for its credential (never the code or credential)
        "device_pair_failed",  # a wrong, expired or used pairing code
        "device_removed",
        "approval_requested",  # a browser asked the user's devices for approval (never the phrase)
        "approval_approved",
        "approval_denied",  # denied on the device
        "approval_wrong_phrase",  # the device picked a phrase the browser did not show: denied, regulated
        "approval_expired",
        "approval_cancelled",  # by the browser that asked
    }
)

FIELDS = ("time", "event", "user", "client", "host", "path", "level", "reason", "request_id")
_MAX = 512
MAX_QUEUED = 100_000  # background lines waiting for the writer thread, at most
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("forwardauth.audit")

# Lines lost in this process, by reason: "write_failed" (the sink refused the
# write), "short_write" (a full disk took part of a batch: the lines cut back),
# "queue_full" (the writer thread stuck behind a hung disk). Read by /metrics.
LOST: collections.Counter[str] = collections.Counter()
_write_fd = os.write  # the one call that writes a file's lines (tests make it fail like a full disk)


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


class _ShortWrite(OSError):
    """Part of a batch was written: cut back to `kept` bytes (whole lines)."""

    def __init__(self, lost: int, cause: OSError | None):
        super().__init__(cause.errno if cause else 0, cause.strerror if cause else "short write")
        self.lost = lost


class AuditLog:
    """Writes audit lines to `target`: "stdout", "stderr" or a file path.

    The file is opened here, so a path that cannot be written fails when the
    log is made (at startup), with an OSError naming it. After that, writing
    never raises: a failed write (full disk, file gone) is logged once when
    it starts, the lines are dropped and counted (`lost`, and `LOST` for
    /metrics), and the next success is logged with how many were lost.

    `emit` writes before it returns (the sign-in pages and the CLI, where a
    line must be there when the answer is). `emit(..., background=True)`
    only queues the line for a writer thread: the decision endpoints use it,
    so a slow disk never holds up the event loop. `flush()` waits for the
    queue; `close()` flushes and closes; `reopen()` (SIGHUP) opens the path
    again.
    """

    def __init__(self, target: str = "stdout", *, to_log: bool = False):
        """`to_log`: report failures through the operational log (the server's JSON
        lines), not as plain text on stderr (commands, and this class alone)."""
        self.target = target
        self.to_log = to_log
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._closed = False
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending = 0
        self._dropped = 0
        self.lost = 0  # lines lost by this log, all reasons
        self._lost_while_failing = 0
        self._done = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        if target not in ("stdout", "stderr"):
            self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

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

    def emit(self, event: str, *, background: bool = False, **fields: str | float | None) -> str:
        """Write one event; returns the line. Raises only for an unknown event
        or field (programming errors), never for I/O."""
        text = self.line(event, **fields)  # type: ignore[arg-type]
        data = (text + "\n").encode("ascii")
        if background:
            with self._done:
                if self._pending >= MAX_QUEUED:  # the writer is stuck (a hung disk): drop, never grow without end
                    self._dropped += 1
                    self._count_lost(1, "queue_full")
                    if self._dropped == 1:
                        self._report(f"forwardauth: audit log {self.target}: {MAX_QUEUED} lines waiting to be written; "
                                "dropping more until the writer catches up\n")
                    return text
                self._pending += 1
            self._start_writer()
            self._queue.put(data)
        else:
            self._write(data)
        return text

    def _report(self, text: str, error: bool = False) -> None:
        if self.to_log:
            log.log(logging.ERROR if error else logging.WARNING, text.strip().removeprefix("forwardauth: "))
        else:
            _report(text)

    def _count_lost(self, n: int, reason: str) -> None:
        self.lost += n
        LOST[reason] += n

    def reopen(self) -> None:
        """Open the path again (SIGHUP, after logrotate renamed the file)."""
        with self._lock:
            if self._fd is not None and not self._closed:
                self._reopen("reopened on request")

    def _reopen(self, why: str) -> None:
        """Under the lock: a new descriptor for the path. Keeps the old one if the path cannot be opened."""
        assert self._fd is not None
        try:
            fd = self._open()
        except OSError as exc:
            self._report(f"forwardauth: audit log {self.target}: cannot open it again ({why}): "
                    f"{exc.strerror or exc}\n")
            return
        os.close(self._fd)
        self._fd = fd
        self._report(f"forwardauth: audit log {self.target}: {why}\n")

    def _follow(self) -> None:
        """Under the lock: the path must still name the open file. Deleted, or
        renamed away without SIGHUP: made anew at its path, so nothing more goes
        to a file nobody reads."""
        assert self._fd is not None
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            st = None
        mine = os.fstat(self._fd)
        if st is None or (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            self._reopen("the file was deleted or moved away; writing to a new one at its path")

    def _append(self, data: bytes) -> None:
        """Under the lock: `data` appended whole, or cut back to its last whole
        line (raises _ShortWrite with the lines lost). The flock keeps other
        processes' lines out between the write and the cut."""
        fd = self._fd
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(fd).st_size  # O_APPEND: the write lands here
            done, cause = 0, None
            while done < len(data):
                try:
                    n = _write_fd(fd, data[done:])
                except OSError as exc:
                    cause = exc
                    break
                if n <= 0:
                    break
                done += n
            if done < len(data):
                keep = data.rfind(b"\n", 0, done) + 1
                if keep < done:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start + keep)
                if cause is not None and done == 0:
                    raise cause
                raise _ShortWrite(data.count(b"\n", keep), cause)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _write(self, data: bytes) -> None:
        lines = data.count(b"\n")
        try:
            with self._lock:
                if self._closed:
                    raise ValueError("closed")
                if self._fd is not None:
                    self._follow()
                    self._append(data)
                else:
                    stream = sys.stdout if self.target == "stdout" else sys.stderr
                    stream.write(data.decode("ascii"))
                    stream.flush()
        except _ShortWrite as exc:
            self._count_lost(exc.lost, "short_write")
            self._failed(exc, exc.lost, "the disk took part of a batch; it was cut back to the last whole line")
            return
        except (OSError, ValueError) as exc:  # ValueError: a closed stream or file
            self._count_lost(lines, "write_failed")
            self._failed(exc, lines, "")
            return
        if self._failing:
            self._failing = False
            lost, self._lost_while_failing = self._lost_while_failing, 0
            self._report(f"forwardauth: audit log {self.target}: writing again; {lost} lines were lost meanwhile\n")

    def _failed(self, exc: BaseException, lost: int, detail: str) -> None:
        self._lost_while_failing += lost
        if not self._failing:
            self._failing = True
            why = getattr(exc, "strerror", None) or str(exc)
            self._report(f"forwardauth: audit log {self.target}: write failed: {why}; "
                    + (f"{detail}; " if detail else "")
                    + "audit lines are being lost until it works again (counted in "
                    "forwardauth_audit_lines_lost_total)\n", error=True)

    def _start_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._drain, name="audit-writer", daemon=True)
                    self._writer.start()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # whatever else is queued goes out in the same write (whole lines only)
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            lines = [b for b in batch if b is not None]
            if lines:
                self._write(b"".join(lines))
            with self._done:
                self._pending -= len(lines)
                if self._pending == 0 and self._dropped:
                    self._report(f"forwardauth: audit log {self.target}: {self._dropped} lines were dropped\n")
                    self._dropped = 0
                self._done.notify_all()
            if stop:
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line is written (or failed); False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self._pending <= 0, timeout)

    def close(self) -> None:
        writer = self._writer
        if writer is not None:
            self._queue.put(None)
            writer.join(5.0)
            self._writer = None
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _report(text: str) -> None:
    """A line for the operator on stderr (a command, where no log is set up)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def open_target(target: str, where: str = "local.audit", *, to_log: bool = False) -> AuditLog:
    """An AuditLog for `target`, or ConfigError naming the setting and why it cannot be written."""
    try:
        return AuditLog(target, to_log=to_log)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot open the audit log {target!r} for writing: "
                           f"{exc.strerror or exc}"]) from None


def audit_log(cfg: Config, target: str, *, cli: bool = False, setting: str = "local.audit") -> AuditLog:
    """The audit log a config asks for: `target` is the setting's value
    (stdout, stderr, or a file path relative to the config file). For a
    command (`cli`), stdout becomes stderr: a command's own output is on
    stdout. A file that cannot be written is a ConfigError naming `setting`.
    The server's log reports its failures through the operational log."""
    if target in ("stdout", "stderr"):
        target = "stderr" if cli else target
    else:
        target = str(resolve_path(cfg, target))
    return open_target(target, f"{cfg.path}: {setting}" if cfg.path else setting, to_log=not cli)
