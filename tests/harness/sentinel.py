"""A real Redis Sentinel setup on loopback: a primary, one replica and three
`redis-sentinel` processes (Debian's redis-sentinel), each on a free port,
their files in the test's tmp dir. `kill_primary()` SIGKILLs whichever node
the sentinels currently call primary; `primary_port()` asks them.
Missing binaries: skipped with the reason outside CI, a failure under CI=true."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from .ci import missing_tool
from .procs import Proc, find_tool, free_port
from .redis import _pong, require_redis

SERVICE = "fa-primary"


def require_sentinel() -> str:
    found = find_tool("redis-sentinel", "/usr/bin/redis-sentinel")
    if not found:
        missing_tool("redis-sentinel not found (run bash scripts/install.sh --test)")
    return found  # type: ignore[return-value]


def _ask(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """One RESP command to 127.0.0.1:port; the raw reply."""
    cmd = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(cmd.encode())
        time.sleep(0.05)
        return s.recv(65536)


class SentinelSetup:
    def __init__(self, workdir: Path, down_after_ms: int = 1000):
        self.redis = require_redis()
        self.sentinel = require_sentinel()
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.nodes: dict[str, Proc] = {}
        self.sentinels: list[Proc] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _node(self, name: str, replica_of: int | None) -> Proc:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        argv = [self.redis, "--bind", "127.0.0.1", "--port", str(self.ports[name]), "--dir", str(d),
                "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        p = Proc(f"redis-{name}", argv, d / "redis.log").start()
        p.wait_until(lambda: _pong(self.ports[name]), what="answering PING")
        return p

    def start(self) -> SentinelSetup:
        self.nodes["a"] = self._node("a", None)
        self.nodes["b"] = self._node("b", self.ports["a"])
        deadline = time.monotonic() + 10
        while b"master_link_status:up" not in _ask(self.ports["b"], "INFO", "replication"):
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.1)
        for i, port in enumerate(self.sentinel_ports):
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {self.workdir}\nprotected-mode no\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['a']} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            p = Proc(f"sentinel-{i}", [self.sentinel, str(conf)], self.workdir / f"sentinel-{i}.log").start()
            p.wait_until(lambda port=port: _pong(port), what="answering PING")
            self.sentinels.append(p)
        # every sentinel knows the replica and the other sentinels before a test fails anything
        deadline = time.monotonic() + 20
        while True:
            ready = all(b"num-other-sentinels\r\n$1\r\n2" in _ask(p, "SENTINEL", "MASTER", SERVICE) and
                        b"num-slaves\r\n$1\r\n1" in _ask(p, "SENTINEL", "MASTER", SERVICE)
                        for p in self.sentinel_ports)
            if ready:
                return self
            assert time.monotonic() < deadline, "the sentinels never saw each other and the replica"
            time.sleep(0.2)

    def primary_port(self) -> int:
        reply = _ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(reply.split(b"\r\n")[-2])

    def kill_primary(self) -> str:
        """SIGKILL the current primary; returns its name ("a" or "b")."""
        port = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == port)
        proc = self.nodes[name]
        assert proc.popen is not None
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(5)
        return name

    def stop(self) -> None:
        for p in [*self.sentinels, *self.nodes.values()]:
            p.stop()

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
