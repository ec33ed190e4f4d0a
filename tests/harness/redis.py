"""A real Redis for tests: Debian's `redis-server` on a free 127.0.0.1 port,
no persistence (no RDB, no AOF) unless `persist` (AOF, fsync always), its
files in the test's tmp dir. It can be stopped (or SIGKILLed) and started
again on the same port (the outage tests do that).
Missing binary: skipped with the reason outside CI, a failure under CI=true."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from .ci import missing_tool
from .procs import Proc, find_tool, free_port


def require_redis() -> str:
    found = find_tool("redis-server", "/usr/bin/redis-server")
    if not found:
        missing_tool("redis-server not found (run bash scripts/install.sh --test)")
    return found  # type: ignore[return-value]


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, persist: bool = False):
        self.binary = require_redis()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *aof,
                "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = Proc("redis-server", argv, self.workdir / "redis.log").start()
        self.proc.wait_until(lambda: _pong(self.port), what="answering PING")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self.proc is not None and self.proc.popen is not None:
            os.killpg(self.proc.popen.pid, signal.SIGKILL)
            self.proc.popen.wait(5)
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
