"""Keys and the data stored under them: what a key still opens, re-sealing
data at rest under the first key, and what removing a key would retire.

Data at rest sealed with the key ring ("data" role, see core.keyring): TOTP
secrets (in accounts) and service accounts' database credentials. Both are
`Sealer` values of a known purpose, so they are re-sealed here without
their parts' code. API tokens are not sealed but derived: the root of each
token comes from the key it was minted under, and the token itself is in
a client's hands, so it cannot be re-sealed; it works for as long as that
key keeps the "data" role, and removing the key retires it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from forwardauth.core.keyring import KeyRing
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.state.base import StateStore
from forwardauth.state.records import SealedCreds

TOTP_SECRET = "totp-secret"  # the purpose TOTP secrets are sealed for (signin.totp.SecretBox)
DBCREDS = "dbcreds"  # the purpose of database credentials (tokens.service)
DBCREDS_MAX = 16384


def totp_sealer(ring: KeyRing) -> Sealer:
    return Sealer(ring, TOTP_SECRET, role="data")


def dbcreds_sealer(ring: KeyRing) -> Sealer:
    return Sealer(ring, DBCREDS, max_length=DBCREDS_MAX, role="data")


def sealed_under(value: str) -> str:
    """The key id a sealed value names."""
    return value.partition(".")[0]


@dataclass(frozen=True)
class Dependents:
    """What is stored under one key and would stop working without it."""

    tokens: tuple[str, ...]  # ids of tokens minted under it, still valid
    totp: tuple[str, ...]  # accounts whose TOTP secret is sealed under it
    dbcreds: tuple[str, ...]  # service accounts whose database credentials are sealed under it

    @property
    def at_rest(self) -> int:
        return len(self.tokens) + len(self.totp) + len(self.dbcreds)


async def dependents(store: StateStore, key_id: str, now: float | None = None) -> Dependents:
    now = time.time() if now is None else now
    tokens = tuple(t.id for t in await store.list_tokens()
                   if t.key_id == key_id and t.revoked is None and t.expires > now)
    accounts = await store.list_accounts()
    totp = tuple(a.username for a in accounts
                 if a.totp_secret_enc is not None and sealed_under(a.totp_secret_enc) == key_id)
    creds = []
    for a in accounts:
        if a.kind == "system" and (c := await store.get_dbcreds(a.username)) is not None:
            if sealed_under(c.sealed) == key_id:
                creds.append(a.username)
    return Dependents(tokens, totp, tuple(creds))


@dataclass(frozen=True)
class Resealed:
    totp: int
    dbcreds: int
    unreadable: tuple[str, ...]  # "totp:NAME" / "dbcreds:NAME": sealed under a key no longer in the ring


async def reseal(store: StateStore, ring: KeyRing) -> Resealed:
    """Every TOTP secret and database credential not sealed under the first key,
    sealed again under it (same content). Ones that no longer open are listed."""
    current = ring.current.id
    totp_box, creds_box = totp_sealer(ring), dbcreds_sealer(ring)
    n_totp = n_creds = 0
    unreadable: list[str] = []
    accounts = await store.list_accounts()
    for a in accounts:
        if a.totp_secret_enc is not None and sealed_under(a.totp_secret_enc) != current:
            try:
                plain = totp_box.open(a.totp_secret_enc)
            except SealError:
                unreadable.append(f"totp:{a.username}")
                continue
            fresh = await store.get_account(a.username)  # again, just before the write
            if fresh is None or fresh.totp_secret_enc != a.totp_secret_enc:
                continue  # changed meanwhile (reset, enrolled anew): sealed by then
            await store.put_account(fresh.changed(time.time(), totp_secret_enc=totp_box.seal(plain)))
            n_totp += 1
    for a in accounts:
        if a.kind != "system" or (c := await store.get_dbcreds(a.username)) is None:
            continue
        if sealed_under(c.sealed) == current:
            continue
        try:
            plain = creds_box.open(c.sealed)
        except SealError:
            unreadable.append(f"dbcreds:{a.username}")
            continue
        await store.put_dbcreds(a.username, SealedCreds(creds_box.seal(plain), c.updated, c.updated_by))
        n_creds += 1
    return Resealed(n_totp, n_creds, tuple(unreadable))
