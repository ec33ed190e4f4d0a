"""In-process state, for tests and single-process experiments.

Every method runs without an await inside, so each is atomic on the event
loop; the lock is for callers on other threads (a test's helper thread).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import replace

from forwardauth.state.base import SWEEP_GRACE, StateStore
from forwardauth.state.memory_devices import MemoryDevices
from forwardauth.state.records import (
    DUPLICATE_MESSAGE,
    Account,
    Advance,
    DuplicateCredential,
    RevocationSnapshot,
    SealedCreds,
    TokenMeta,
    TooManyCredentials,
    WebAuthnCredential,
    check_credential_name,
    counter_advances,
    too_many_message,
)


class Expiries:
    """When each key of a dict may go, and which have gone: a heap of
    (expires, key), so a sweep reads only what it removes. Not thread-safe
    (callers hold their lock)."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, key: str, expires: float) -> None:
        self.until[key] = expires
        heapq.heappush(self._heap, (expires, key))

    def forget(self, key: str) -> None:
        self.until.pop(key, None)  # its heap entries are skipped when they come up

    def pop_expired(self, upto: float) -> list[str]:
        """Remove and return the keys whose latest expiry is at or before `upto`."""
        out = []
        while self._heap and self._heap[0][0] <= upto:
            expires, key = heapq.heappop(self._heap)
            if self.until.get(key) == expires:  # else a later set() (or forget()) superseded it
                del self.until[key]
                out.append(key)
        return out


class MemoryStore(MemoryDevices, StateStore):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._devices_init()  # devices, pairings, approval requests, their change feed (memory_devices.py)
        # revocations
        self.rev_version = 0
        self.epochs: dict[str, float] = {}
        self.revoked: dict[str, float] = {}
        # single-use claims: key -> until
        self.claims = Expiries()
        # accounts; failure counters: key -> failure times, keys swept by `failure_expiries`
        self.accounts: dict[str, Account] = {}
        self.failure_times: dict[str, list[float]] = {}
        self.failure_expiries = Expiries()
        # tokens and database credentials; `tok_version` also moves on account writes
        self.tokens: dict[str, TokenMeta] = {}
        self.dbcreds: dict[str, SealedCreds] = {}
        self.tok_version = 0
        # WebAuthn credentials by id
        self.webauthn: dict[bytes, WebAuthnCredential] = {}

    # --- revocations ----------------------------------------------------------------

    async def revocation_version(self) -> int:
        return self.rev_version

    async def revocations(self, now: float) -> RevocationSnapshot:
        with self.lock:
            return RevocationSnapshot(self.rev_version, dict(self.epochs),
                                      {k: v for k, v in self.revoked.items() if v > now})

    async def set_epoch(self, user: str, epoch: float) -> float:
        with self.lock:
            self.epochs[user] = max(self.epochs.get(user, 0.0), epoch)
            self.rev_version += 1
            self._publish(user)  # the user's devices may be revoked: their polls look again
            return self.epochs[user]

    async def reset_epoch(self, user: str, epoch: float) -> None:
        with self.lock:
            self.epochs[user] = epoch
            self.rev_version += 1
            self._publish(user)

    async def revoke(self, ident: str, until: float) -> None:
        with self.lock:
            now = time.time()  # trim first, only what has expired anyway
            self.revoked = {k: v for k, v in self.revoked.items() if v >= now}
            self.revoked[ident] = max(self.revoked.get(ident, 0.0), until)
            self.rev_version += 1

    # --- single-use claims ----------------------------------------------------------

    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        with self.lock:
            self.claims.pop_expired(now)  # expired claims go first (a heap: only those are read)
            if key in self.claims.until:
                return False
            self.claims.set(key, now + ttl)
            return True

    # --- accounts -------------------------------------------------------------------

    async def get_account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    async def add_account(self, account: Account) -> bool:
        with self.lock:
            if account.username in self.accounts:
                return False
            self.accounts[account.username] = account
            self.tok_version += 1
            return True

    async def put_account(self, account: Account) -> None:
        with self.lock:
            old = self.accounts.get(account.username)
            if old is not None:
                step = account.totp_last_step
                if old.totp_secret_enc == account.totp_secret_enc:
                    step = max(step, old.totp_last_step)
                account = replace(account, totp_last_step=step, created=old.created)
            self.accounts[account.username] = account
            self.tok_version += 1

    async def delete_account(self, name: str) -> bool:
        with self.lock:
            found = self.accounts.pop(name, None) is not None
            if found:
                self.tok_version += 1
            return found

    async def list_accounts(self) -> list[Account]:
        return [a for _, a in sorted(self.accounts.items())]

    async def claim_totp_step(self, name: str, step: int) -> bool:
        with self.lock:
            a = self.accounts.get(name)
            if a is None or a.totp_secret_enc is None or a.totp_last_step >= step:
                return False
            self.accounts[name] = replace(a, totp_last_step=step)
            return True

    # --- failure counters -----------------------------------------------------------

    async def record_failure(self, key: str, now: float, window: float) -> int:
        with self.lock:
            # Keys whose every entry left its window (keys that never come back), as in SQLite.
            for gone in self.failure_expiries.pop_expired(now - SWEEP_GRACE):
                self.failure_times.pop(gone, None)
            kept = [t for t in self.failure_times.get(key, []) if t > now - window]
            kept.append(now)
            self.failure_times[key] = kept
            self.failure_expiries.set(key, max(self.failure_expiries.until.get(key, now + window), now + window))
            return sum(1 for t in kept if t <= now)

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]:
        with self.lock:
            inside = [t for t in self.failure_times.get(key, []) if now - window < t <= now]
        return len(inside), (max(inside) if inside else None)

    async def clear_failures(self, key: str) -> None:
        with self.lock:
            self.failure_times.pop(key, None)
            self.failure_expiries.forget(key)

    # --- tokens and database credentials --------------------------------------------

    async def put_token(self, meta: TokenMeta) -> None:
        with self.lock:
            self.tokens[meta.id] = meta
            self.tok_version += 1

    async def get_token(self, token_id: str) -> TokenMeta | None:
        return self.tokens.get(token_id)

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        items = [t for t in self.tokens.values() if account is None or t.account == account]
        return sorted(items, key=lambda t: (t.created, t.id))

    async def revoke_token(self, token_id: str, when: float) -> bool:
        with self.lock:
            t = self.tokens.get(token_id)
            if t is None or t.revoked is not None:
                return False
            self.tokens[token_id] = replace(t, revoked=when)
            self.tok_version += 1
            return True

    async def touch_tokens(self, used: dict[str, float]) -> None:
        with self.lock:
            for i, when in used.items():
                t = self.tokens.get(i)
                if t is not None and (t.last_used is None or t.last_used < when):
                    self.tokens[i] = replace(t, last_used=when)

    async def tokens_version(self) -> int:
        return self.tok_version

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        self.dbcreds[account] = creds

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        return self.dbcreds.get(account)

    async def delete_dbcreds(self, account: str) -> bool:
        return self.dbcreds.pop(account, None) is not None

    # --- WebAuthn credentials ---------------------------------------------------------

    async def webauthn_credentials(self, user: str) -> list[WebAuthnCredential]:
        with self.lock:
            return sorted((c for c in self.webauthn.values() if c.user == user), key=lambda c: (c.created, c.id))

    async def webauthn_credential(self, credential_id: bytes) -> WebAuthnCredential | None:
        return self.webauthn.get(credential_id)

    async def add_webauthn_credential(self, credential: WebAuthnCredential, max_per_user: int) -> None:
        with self.lock:
            if credential.id in self.webauthn:
                raise DuplicateCredential(DUPLICATE_MESSAGE)
            if sum(1 for c in self.webauthn.values() if c.user == credential.user) >= max_per_user:
                raise TooManyCredentials(too_many_message(max_per_user))
            self.webauthn[credential.id] = credential

    def _own(self, user: str, credential_id: bytes) -> WebAuthnCredential | None:
        c = self.webauthn.get(credential_id)
        return c if c is not None and c.user == user else None

    async def rename_webauthn_credential(self, user: str, credential_id: bytes, name: str) -> bool:
        name = check_credential_name(name)
        with self.lock:
            c = self._own(user, credential_id)
            if c is None:
                return False
            self.webauthn[credential_id] = replace(c, name=name)
            return True

    async def remove_webauthn_credential(self, user: str, credential_id: bytes) -> bool:
        with self.lock:
            if self._own(user, credential_id) is None:
                return False
            del self.webauthn[credential_id]
            return True

    async def remove_webauthn_credentials(self, user: str) -> int:
        with self.lock:
            gone = [k for k, c in self.webauthn.items() if c.user == user]
            for k in gone:
                del self.webauthn[k]
            return len(gone)

    async def advance_webauthn_credential(self, credential_id: bytes, sign_count: int, backed_up: bool,
                                          user_verified: bool, now: float, lock_reason: str) -> Advance:
        with self.lock:
            c = self.webauthn.get(credential_id)
            if c is None:
                return Advance.GONE
            if c.locked is not None:
                return Advance.LOCKED
            if not counter_advances(c.sign_count, sign_count):
                self.webauthn[credential_id] = replace(c, locked=lock_reason)
                return Advance.REGRESSED
            self.webauthn[credential_id] = c.used(sign_count, backed_up, user_verified, now)
            return Advance.ADVANCED
