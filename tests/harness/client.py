"""A plain HTTP client for tests: no redirects followed, every header kept.

http.client is used on purpose: it sends exactly the Host header we give,
never follows a 302, and shows repeated headers (two Set-Cookie, two
X-Auth-Request-User) as separate entries, which is what the tests check.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass


@dataclass(repr=False)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        """The one value of header `name`; None when absent. Fails when repeated."""
        values = self.all(name)
        assert len(values) <= 1, f"header {name} repeated: {values}"
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def app_headers(self) -> dict[str, list[str]]:
        """The headers the echo app received: lower-case name -> list of values."""
        out: dict[str, list[str]] = {}
        for k, v in self.json()["headers"]:
            out.setdefault(k.lower(), []).append(v)
        return out

    def __repr__(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"HTTP {self.status}\n{head}\n\n{self.text[:2000]}"


def request(port: int, path: str, *, host: str, method: str = "GET", headers: dict | None = None,
            timeout: float = 10.0) -> Reply:
    """One request to 127.0.0.1:port with Host `host`; redirects are returned, not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()
