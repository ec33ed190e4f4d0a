"""Shared state: what must be the same on every replica (revocations, later
tokens, accounts, rate limits). Sessions themselves are not stored.

`open_store(url)` picks the backend from the config's `state` URL.
"""

from __future__ import annotations

from forwardauth.state.base import RevocationSnapshot, StateStore, StoreUnavailable


def open_store(url: str) -> StateStore:
    if url.startswith("sqlite://"):
        from forwardauth.state.sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite://") :])
    if url == "memory://":
        from forwardauth.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        try:
            from forwardauth.state.redis import RedisStore  # type: ignore[import-not-found]
        except ImportError:
            raise StoreUnavailable("the redis state backend is not available in this build") from None
        return RedisStore(url)
    raise StoreUnavailable(f"unknown state URL scheme: {url.split(':', 1)[0]}")


__all__ = ["open_store", "StateStore", "RevocationSnapshot", "StoreUnavailable"]
