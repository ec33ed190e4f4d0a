"""Set-Cookie values with the flags the spec requires, built in one place."""

from __future__ import annotations

from forwardauth.core.config import SessionConfig


def set_cookie(cfg: SessionConfig, name: str, value: str, max_age: int, path: str = "/") -> str:
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max(0, int(max_age))}", "HttpOnly",
             f"SameSite={cfg.same_site}"]
    if cfg.secure:
        parts.append("Secure")
    if cfg.domain and not name.startswith("__Host-"):
        parts.append(f"Domain={cfg.domain}")
    return "; ".join(parts)


def clear_cookie(cfg: SessionConfig, name: str, path: str = "/") -> str:
    return set_cookie(cfg, name, "", 0, path)


def cookie_value(header: str | None, name: str) -> str | None:
    """The first value of cookie `name` in a Cookie header.

    The hot path's own parser: http.cookies (behind aiohttp's request.cookies)
    costs more than the whole decision, and forwardauth only ever needs one
    cookie, whose value is a plain base64url token.
    """
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key.strip() == name:
            return value.strip()
    return None
