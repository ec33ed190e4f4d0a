"""A minimal browser for forwardauth's own pages (sign-in, TOTP, sign-out)
over plain HTTP: it keeps cookies, never follows a redirect, and reads a
page's hidden form fields (the CSRF token), so a test can sign in against a
real `forwardauth serve` without Chromium."""

from __future__ import annotations

import html
import http.client
import re
from urllib.parse import urlencode

from .client import Reply

_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


class Browser:
    def __init__(self, port: int, host: str):
        self.port, self.host = port, host
        self.cookies: dict[str, str] = {}

    def _send(self, method: str, path: str, body: str | None = None, headers: dict | None = None) -> Reply:
        h = {"Host": self.host, **(headers or {})}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()
        for value in reply.all("Set-Cookie"):
            pair = value.split(";", 1)[0]
            name, _, v = pair.partition("=")
            if "Max-Age=0" in value or not v:
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = v
        return reply

    def get(self, path: str, **params: str) -> Reply:
        return self._send("GET", path + (f"?{urlencode(params)}" if params else ""))

    def post(self, path: str, fields: dict[str, str]) -> Reply:
        return self._send("POST", path, urlencode(fields))

    def form(self, path: str, **params: str) -> dict[str, str]:
        """The hidden fields of the form on a page (GET)."""
        r = self.get(path, **params)
        assert r.status == 200, r
        return {m.group(1): html.unescape(m.group(2)) for m in _HIDDEN.finditer(r.text)}

    def sign_in(self, username: str, password: str, rd: str) -> Reply:
        fields = self.form("/oauth2/sign_in", rd=rd)
        return self.post("/oauth2/sign_in", {**fields, "username": username, "password": password})

    def cookie(self, name: str = "forwardauth") -> str | None:
        return self.cookies.get(name)
