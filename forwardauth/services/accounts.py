"""The account service: every change to an account, with one meaning and one
audit vocabulary, whoever asks (`forwardauth users`, `forwardauth accounts`
or the admin API).

Who may ask for what is the caller's business (the admin API and `accounts`
apply `tokens.rules`; the `users` CLI is the operator). What a change does is
decided here, once:

- create: insert only (a name that exists is `AccountExists`); typed
  usernames only: an upstream identity's account ("oidc:<sub>") is made by
  its own TOTP set-up, never by hand.
- password, groups, TOTP reset or replacement, revoke sessions: the change,
  then the account's sessions and tokens end (its epoch is raised to now).
  Groups set to what they already are change nothing and end nothing.
- lock: status locked and the epoch set to the far future, so every session
  and token dies, and anything minted while locked is dead too.
- unlock: status active, the epoch brought back to now (what was issued
  before stays dead), and the username's ban for failed attempts lifted.
- delete: sessions and tokens end (epoch), every token is revoked by id (so a
  later account of the same name inherits none), the database credentials
  and the passkeys/security keys and approving devices are deleted (a
  device's waiting poll ends with 401), then the account itself with its
  password and TOTP secret.

Ending an account's sessions also ends those of the upstream identity whose
second factor it holds: "oidc:<sub>" sessions carry the bare <sub>, whose
epoch is raised too (a local account of that very name is signed out with it).

Audit lines: `event`, `user` (the account) and `reason` ("... by <actor>; what
ended"), the same for every caller; only <actor> differs ("operator (cli)" for
both CLIs, the admin's username for the API).

The store, the audit function and the clock are arguments: no globals, so
tests run it against any store with a fixed clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from forwardauth.services.account_names import account_store, check_username, is_upstream_account, upstream_sub
from forwardauth.services.regulation import lift_ban
from forwardauth.state.base import StateStore
from forwardauth.state.records import Account, AccountError, TokenMeta, check_groups
from forwardauth.state.revocations import FAR_FUTURE

# Writes one audit line: audit(event, user=..., reason=...) (AuditLog.emit or alike).
AuditFn = Callable[..., Any]
Clock = Callable[[], float]

# Both CLIs act as the operator: they hold the key ring and the state store.
OPERATOR = "operator (cli)"


class NotFound(LookupError):
    """No such account (or token, credentials...). The message is safe to show."""


class AccountExists(ValueError):
    """`create` of a name that is taken. The message is safe to show."""


def check_can_have_password(account: Account) -> None:
    """Raise AccountError unless `account` may hold a password: callers check
    before asking for one, `set_password` checks again."""
    if is_upstream_account(account.username):
        raise AccountError(f"{account.username} holds the second factor of an upstream identity: it has no password")
    if account.kind != "human":
        raise AccountError(f"{account.username} is a system account: it cannot have a password")


async def revoke_token(store: StateStore, audit: AuditFn, meta: TokenMeta, now: float, why: str) -> bool:
    """Revoke one token: its record (for people to read) and its id in the
    revocation list (what decisions check), audited once. True when it was
    active. Shared by the token service and `AccountService.delete`."""
    changed = await store.revoke_token(meta.id, now)
    await store.revoke(meta.id, meta.expires)
    if changed:
        audit("token_revoked", user=meta.account, reason=f"token {meta.id} ({meta.name}): {why}")
    return changed


class AccountService:
    def __init__(self, store: StateStore, audit: AuditFn, clock: Clock = time.time) -> None:
        self.store = store
        self.accounts = account_store(store)
        self.audit = audit
        self.clock = clock

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # --- reading -------------------------------------------------------------

    async def get(self, name: str) -> Account | None:
        return await self.accounts.get_account(name)

    async def need(self, name: str) -> Account:
        """The account, or NotFound("no account 'name'")."""
        acct = await self.accounts.get_account(name)
        if acct is None:
            raise NotFound(f"no account {name!r}")
        return acct

    async def list_accounts(self) -> list[Account]:
        """Every account, ordered by name (upstream identities' accounts included)."""
        return await self.accounts.list_accounts()

    # --- making and changing -------------------------------------------------

    async def create(self, actor: str, name: str, *, kind: str = "human", display_name: str | None = None,
                     email: str | None = None, groups: Any = (), password_hash: str | None = None,
                     now: float | None = None) -> Account:
        """A new account. AccountError for an invalid value, AccountExists when
        the name is taken (nothing is changed then)."""
        now = self._now(now)
        check_username(name)
        acct = Account(name, kind=kind, display_name=display_name, email=email, groups=check_groups(groups),
                       password_hash=password_hash, created=now, updated=now)
        if not await self.accounts.add_account(acct):
            raise AccountExists(f"account {name} exists")
        self.audit("account_created", user=name, reason=f"{acct.kind} account by {actor}")
        return acct

    async def set_password(self, actor: str, name: str, password_hash: str, now: float | None = None) -> Account:
        """Set the password (an scrypt record: the caller hashes, with its
        settings), then end the account's sessions and tokens."""
        now = self._now(now)
        acct = await self.need(name)
        check_can_have_password(acct)
        acct = acct.changed(now, password_hash=password_hash)
        await self.accounts.put_account(acct)
        await self._end_sessions(name, now)
        self.audit("account_updated", user=name, reason=f"password changed by {actor}; sessions and tokens revoked")
        return acct

    async def set_groups(self, actor: str, name: str, groups: Any, now: float | None = None) -> tuple[Account, bool]:
        """Set the groups (roles): (account, changed). A change ends the
        account's sessions and tokens: a session carries the groups it was
        issued with and must not keep a removed one, and one rule for every
        change (additions too) keeps it predictable. AccountError for a bad
        group name (checked before the account is looked up)."""
        now = self._now(now)
        new = check_groups(groups)
        acct = await self.need(name)
        if new == acct.groups:
            return acct, False
        acct = acct.changed(now, groups=new)
        await self.accounts.put_account(acct)
        # After the write, at its time or later: a session signed in meanwhile
        # (with the old groups) is older than the epoch.
        await self._end_sessions(name, max(now, self.clock()))
        self.audit("account_updated", user=name,
                   reason=f"groups set to {','.join(new) or '-'} by {actor}; sessions and tokens revoked")
        return acct, True

    async def lock(self, actor: str, name: str, now: float | None = None) -> Account:
        """Lock: the epoch first, so if the status write then fails, everything
        is already dead (fail closed)."""
        now = self._now(now)
        acct = await self.need(name)
        await self.store.set_epoch(name, FAR_FUTURE)
        await self._end_upstream(name, now)
        acct = acct.changed(now, status="locked")
        await self.accounts.put_account(acct)
        self.audit("account_locked", user=name, reason=f"by {actor}; every session and token revoked")
        return acct

    async def unlock(self, actor: str, name: str, now: float | None = None) -> Account:
        """Unlock, and lift the username's ban for failed attempts. The epoch
        first, so no replica sees the account active while still without the
        new epoch (and if the status write then fails, it simply stays locked)."""
        now = self._now(now)
        acct = await self.need(name)
        await self.store.reset_epoch(name, now)
        acct = acct.changed(now, status="active")
        await self.accounts.put_account(acct)
        await lift_ban(self.store, name)
        self.audit("account_unlocked", user=name,
                   reason=f"by {actor}; failed-attempt ban lifted; older sessions and tokens stay revoked")
        return acct

    async def revoke_sessions(self, actor: str, name: str, now: float | None = None) -> float:
        """Sign `name` out everywhere: every session and token issued until now
        dies. Returns the account's epoch."""
        now = self._now(now)
        await self.need(name)
        epoch = await self._end_sessions(name, now)
        self.audit("session_revoked", user=name, reason=f"sessions and tokens revoked by {actor}")
        return epoch

    async def delete(self, actor: str, name: str, now: float | None = None) -> None:
        """Delete `name`, leaving nothing valid behind. The epoch first: from
        that write on, every session and token is dead whatever happens next."""
        now = self._now(now)
        await self.need(name)
        await self._end_sessions(name, now)
        for t in await self.store.list_tokens(name):
            if t.revoked is None:
                await revoke_token(self.store, self.audit, t, now, f"account deleted by {actor}")
        await self.store.delete_dbcreds(name)
        keys = await self.store.remove_webauthn_credentials(name)
        await self.store.remove_devices(name)
        await self.accounts.delete_account(name)
        self.audit("account_deleted", user=name,
                   reason=f"by {actor}; tokens, sessions, approving devices and database credentials removed"
                   + (f"; {keys} security key(s) and passkey(s) removed" if keys else ""))

    # --- TOTP ----------------------------------------------------------------

    async def set_totp(self, actor: str, name: str, sealed_secret: str, now: float | None = None) -> bool:
        """Store a TOTP secret (sealed by the caller, which shows it): True when
        it replaced one, whose sessions then end."""
        now = self._now(now)
        acct = await self.need(name)
        if acct.kind != "human":
            raise AccountError(f"{name} is a system account: it signs in with API tokens only")
        replaced = acct.has_totp
        await self.accounts.put_account(acct.changed(now, totp_secret_enc=sealed_secret, totp_last_step=0))
        if replaced:
            await self._end_sessions(name, now)
        self.audit("totp_enrolled", user=name,
                   reason=f"by {actor}" + ("; replaced; sessions and tokens revoked" if replaced else ""))
        return replaced

    async def reset_totp(self, actor: str, name: str, now: float | None = None) -> bool:
        """Remove the TOTP secret (the next page that needs it guides the user
        through setting it up again) and end the sessions. False, changing
        nothing, when there was none."""
        now = self._now(now)
        acct = await self.need(name)
        if not acct.has_totp:
            return False
        await self.accounts.put_account(acct.changed(now, totp_secret_enc=None, totp_last_step=0))
        await self._end_sessions(name, now)
        self.audit("totp_reset", user=name, reason=f"by {actor}; sessions and tokens revoked")
        return True

    # --- ending sessions -----------------------------------------------------

    async def _end_sessions(self, name: str, now: float) -> float:
        """Raise the epoch of `name` (and of its upstream identity) to `now`;
        returns the account's epoch."""
        epoch = await self.store.set_epoch(name, now)
        await self._end_upstream(name, now)
        return epoch

    async def _end_upstream(self, name: str, now: float) -> None:
        sub = upstream_sub(name)
        if sub is not None:
            await self.store.set_epoch(sub, now)
