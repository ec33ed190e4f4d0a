"""Send a request target byte for byte, over a kept-alive connection.

http.client (and every other client) checks and sometimes rewrites a
request target: it refuses spaces and control characters, and others
normalise dot segments or drop `#...`. The path tests need the proxy to get
exactly the bytes an attacker would send, so this writes the request line
itself and reads the answer with http.client's response parser (which
handles Content-Length, chunked bodies and connection close).
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass, field


@dataclass(repr=False)
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"header {name} repeated: {values}"
        return values[0] if values else None

    def __repr__(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"HTTP {self.status}\n{head}\n\n{self.body[:1500]!r}"


@dataclass
class RawClient:
    """One keep-alive connection to 127.0.0.1:port; reconnects when the server closes it."""

    port: int
    timeout: float = 10.0
    sock: socket.socket | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, target: bytes | str, host: str, headers: list[tuple[str, str]] | dict | None = None,
                method: str = "GET") -> RawReply:
        """`method target HTTP/1.1` with Host `host` and `headers`, as given (no checks)."""
        if isinstance(target, str):
            target = target.encode("utf-8", "surrogateescape")
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in items) + b"\r\n"
        for attempt in (1, 2):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            try:
                self.sock.sendall(head)
                resp = http.client.HTTPResponse(self.sock, method=method)
                resp.begin()
                body = resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                # A kept-alive connection the server had closed meanwhile: once more on a new one.
                self.close()
                if fresh or attempt == 2:
                    raise
                continue
            if resp.will_close:
                self.close()
            return RawReply(resp.status, resp.getheaders(), body)
        raise AssertionError("unreachable")


def once(port: int, target: bytes | str, host: str, headers: list[tuple[str, str]] | dict | None = None,
         method: str = "GET") -> RawReply:
    client = RawClient(port)
    try:
        return client.request(target, host, headers, method)
    finally:
        client.close()
