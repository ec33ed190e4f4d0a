"""The in-memory view of revocations that the hot path reads.

Each process keeps a snapshot of user epochs and revoked ids and refreshes it
in the background (a cheap version check, a full reload only on change), so a
decision never touches the disk or the network. A revocation is in force on
every replica within one refresh interval.

The snapshot is plain dicts, not a cachetools cache: it is replaced whole on
each refresh and only read in between, and its size is bounded by the store
(which trims revoked ids once they expire anyway). A cache would evict
entries to stay under a size or age, and evicting an entry here would
un-revoke that user or session.

Refreshed by the process's one `forwardauth.state.refresh.Refresher`, with
the token index.
"""

from __future__ import annotations

import logging
import time

from forwardauth.state.base import RevocationStore, StoreUnavailable
from forwardauth.state.records import RevocationSnapshot
from forwardauth.state.refresh import Snapshot

log = logging.getLogger("forwardauth.revocation")

# Locking an account sets its epoch this far in the future: every session and
# token issued before it, and any minted while the account stays locked, is dead.
FAR_FUTURE = 253402300799.0  # 9999-12-31T23:59:59Z


class Revocations(Snapshot):
    """The snapshot, plus what this process must never forget while it runs:

    - a revocation accepted here that the store could not record (sign-out
      during an outage: `remember`) is refused by this process at once and
      written to the store by the first refresh that reaches it;
    - when the store holds less than this process saw (its revocation
      version went backwards, or the store says it lost its data: a Redis
      that came back empty, a failover that lost the newest writes, a state
      file replaced), every epoch and still-relevant revoked id of the last
      snapshot is written back (epochs only rise, revocations only extend:
      writing back never undoes a newer change), logged at error level, and
      the store records the loss (`StateStore.restored`).
    """

    what = "revocation refresh"
    log = log

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = RevocationSnapshot(-1)
        self.pending: dict[str, float] = {}  # id -> until: accepted here, not recorded by the store yet
        self.losses_seen = 0
        self.written_back = 0  # entries written back after losses (for the log and the tests)

    def is_revoked(self, sub: str, ident: str, issued_at: float) -> bool:
        snap = self.snapshot
        epoch = snap.epochs.get(sub)
        if epoch is not None and issued_at < epoch:
            return True
        return ident in snap.revoked

    def epoch(self, sub: str) -> float | None:
        return self.snapshot.epochs.get(sub)

    def remember(self, ident: str, until: float) -> None:
        """Revoke `ident` in this process now; the next refresh that reaches the store records it there."""
        self.pending[ident] = max(until, self.pending.get(ident, 0.0))
        self._set(self.snapshot)

    def _set(self, snap: RevocationSnapshot) -> None:
        """Install `snap` with the pending revocations laid over it."""
        if self.pending:
            revoked = dict(snap.revoked)
            for ident, until in self.pending.items():
                revoked[ident] = max(until, revoked.get(ident, 0.0))
            snap = RevocationSnapshot(snap.version, snap.epochs, revoked)
        self.snapshot = snap

    async def refresh(self, store: RevocationStore, now: float | None = None) -> bool:
        """Reload from the store if it changed. Returns True when the store answered."""

        async def load() -> None:
            t = time.time() if now is None else now
            version = await store.revocation_version()  # (a store with a marker reads it here too)
            untrusted = getattr(store, "untrusted", None)
            why = untrusted() if untrusted is not None else None
            if why is not None and self.last_ok is None:  # nothing remembered yet to write back: wait
                raise StoreUnavailable(why)
            old = self.snapshot
            losses = getattr(store, "losses", 0)
            if losses != self.losses_seen or (old.version >= 0 and version < old.version):
                await self._write_back(store, old, t, version)
                self.losses_seen = losses
                self._set(await store.revocations(t))
            elif version != old.version:
                self._set(await store.revocations(t))
            if self.pending:
                for ident, until in list(self.pending.items()):
                    if until > t:
                        await store.revoke(ident, until)
                    del self.pending[ident]
                self._set(await store.revocations(t))

        return await self._guarded(load)

    async def _write_back(self, store: RevocationStore, old: RevocationSnapshot, now: float, version: int) -> None:
        """The store lost what `old` holds: write it back, then let the store record the loss."""
        have = await store.revocations(now)
        epochs = {u: e for u, e in old.epochs.items() if have.epochs.get(u, float("-inf")) < e}
        revoked = {i: u for i, u in old.revoked.items() if u > now and have.revoked.get(i, 0.0) < u}
        for user, epoch in epochs.items():
            await store.set_epoch(user, epoch)
        for ident, until in revoked.items():
            await store.revoke(ident, until)
        self.written_back += len(epochs) + len(revoked)
        restored = getattr(store, "restored", None)
        if restored is not None:
            await restored()
        self.log.error("the state store holds less than this process saw (revocation version %s, seen %s): "
                       "wrote back %d epochs and %d revoked ids it remembered; the store's loss is recorded "
                       "until `forwardauth state ack`", version, old.version, len(epochs), len(revoked))
