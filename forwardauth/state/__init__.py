"""Shared state: what must be the same on every process and replica
(revocations, accounts, tokens, failure counters, single-use claims).
Sessions themselves are not stored.

Where to look:
- `records`: the values stored (Account, TokenMeta, SealedCreds, RevocationSnapshot);
- `base`: what a store does, one protocol per kind of record, with the exact
  semantics every backend shares, and `StateStore`, which is all of them;
- `memory`, `sqlite`, `redis`: the backends, each creating what it needs itself;
- `refresh`: the base of the in-memory snapshots the hot path reads (revocations,
  token index) and the one loop that refreshes them all.

`open_store(url)` picks the backend from the config's `state` URL. Nothing
here imports another part of forwardauth: the parts depend on state.
"""

from __future__ import annotations

from forwardauth.state.base import (
    AccountStore,
    ClaimStore,
    FailureStore,
    RevocationStore,
    StateStore,
    StoreUnavailable,
    TokenStore,
)
from forwardauth.state.records import Account, AccountError, RevocationSnapshot, SealedCreds, TokenMeta


def open_store(url: str, *, settle: float | None = None) -> StateStore:
    """The store of a `state` URL. `settle`: given by a serving process (see
    forwardauth.state.redis, "Continuity"); commands leave it out."""
    if url.startswith("sqlite://"):
        from forwardauth.state.sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite://") :])
    if url == "memory://":
        from forwardauth.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "redis+sentinel://")):
        try:
            from forwardauth.state.redis import RedisStore
        except ImportError:
            raise StoreUnavailable("the redis state backend is not available in this build") from None
        return RedisStore(url, settle=settle)
    raise StoreUnavailable(f"unknown state URL scheme: {url.split(':', 1)[0]}")


__all__ = ["open_store", "StateStore", "StoreUnavailable", "RevocationStore", "ClaimStore", "AccountStore",
           "TokenStore", "FailureStore", "Account", "AccountError", "RevocationSnapshot", "TokenMeta", "SealedCreds"]
