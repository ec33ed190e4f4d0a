"""Issuing, listing and revoking tokens; service-account database credentials.

Shared by the admin API and the CLI, so both apply the same rules (`rules`)
and write the same audit lines. Runs off the hot path: it reads and writes
the store. Every refusal is a `Denied` or `NotFound` whose message is safe
to show; nothing here logs or returns a token except `issue` to its caller.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forwardauth.core.config import Config
from forwardauth.core.keyring import KeyRing
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.services.account_names import account_store
from forwardauth.services.accounts import OPERATOR as OPERATOR_NAME
from forwardauth.services.accounts import AccountExists, AccountService, NotFound, revoke_token
from forwardauth.services.keys import dbcreds_sealer
from forwardauth.state.base import AccountStore, StateStore, TokenStore
from forwardauth.state.records import Account, AccountError, SealedCreds, TokenMeta
from forwardauth.tokens import caveats as cv
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens import rules
from forwardauth.tokens.settings import settings

TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:@-]{0,63}$")
DBCREDS_FIELDS = {"host", "port", "database", "username", "password", "sslmode"}


class Denied(PermissionError):
    """Not allowed. The message is safe to show."""


class Invalid(ValueError):
    pass


class Conflict(RuntimeError):
    """A concurrent change won. The message is safe to show."""


# A callable (event, **fields) -> None that writes an audit line.
AuditFn = Callable[..., Any]


def _no_audit(event: str, **fields: Any) -> None:
    return None


def actor_of(account: Account) -> rules.Actor:
    return rules.Actor(account.username, account.kind, tuple(account.groups), account.status == "active")


def target_of(account: Account) -> rules.Target:
    return rules.Target(account.username, account.kind, account.status == "active")


OPERATOR = rules.Actor(OPERATOR_NAME, "human", (rules.ADMIN_ROLE,))


def _may_know(actor: rules.Actor, account: str) -> bool:
    """Whether `actor` could have any right over `account` (admin, itself, or
    holding the role named after it). Checked before the account is looked up,
    so everybody else gets the same "may not" for accounts that exist and
    accounts that do not."""
    return actor.active and (actor.is_admin or actor.name == account or account in actor.roles)


@dataclass
class Issued:
    token: str
    meta: TokenMeta


class TokenService:
    def __init__(self, config: Config, ring: KeyRing, store: StateStore, audit: AuditFn = _no_audit):
        self.config = config
        self.ring = ring
        self.store = store
        self.tokens: TokenStore = store
        self.accounts: AccountStore = account_store(store)
        self.audit = audit
        self.settings = settings(config)
        # Every account change goes through the one account service; this
        # class only adds who may ask (`rules`) for the API and `accounts`.
        self.account_service = AccountService(store, audit)

    async def account(self, name: str) -> Account:
        return await self.account_service.need(name)

    async def actor(self, name: str) -> rules.Actor:
        return actor_of(await self.account(name))

    # --- tokens -----------------------------------------------------------

    async def issue(self, actor: rules.Actor, account: str, *, name: str = "default", lifetime: float | None = None,
                    level: str | None = None, restrictions: tuple[str, ...] = (), now: float | None = None) -> Issued:
        now = time.time() if now is None else now
        if not _may_know(actor, account):  # before the lookup: no "no account" answer to outsiders
            self.audit("token_issued", user=account, reason=f"refused: {actor.name} may not issue for {account}")
            raise Denied(f"{actor.name} may not issue tokens for {account}")
        target = await self.account(account)
        if not rules.may_issue(actor, target_of(target)):
            self.audit("token_issued", user=account, reason=f"refused: {actor.name} may not issue for {account}")
            raise Denied(f"{actor.name} may not issue tokens for {account}")
        if not TOKEN_NAME_RE.match(name):
            raise Invalid("token name must be 1-64 of letters, digits, space, _ . : @ - "
                          "(starting with a letter or digit)")
        levels = self.config.levels
        allowed = self.settings.level_for(account, self.config)
        level = level or allowed
        if level not in levels:
            raise Invalid(f"unknown level {level!r} (levels: {', '.join(levels.names)})")
        if not levels.at_least(allowed, level):
            raise Denied(f"tokens for {account} may have level {allowed} at most")
        life = self.settings.default_lifetime if lifetime is None else lifetime
        if not 60 <= life <= self.settings.max_lifetime:
            raise Invalid(f"lifetime must be from 60s to {int(self.settings.max_lifetime)}s")
        for r in restrictions:
            kind, _, value = r.partition("=")
            if kind in ("account", "level", "issued", "expires"):
                raise Invalid("restrictions may only be host=, path= or method=")
            try:
                cv.make(kind, value)
            except cv.CaveatError as exc:
                raise Invalid(f"restriction {r!r}: {exc}") from None
        token_id = mac.new_token_id()
        expires = now + life
        caveats = [f"account={account}", f"level={level}", f"issued={cv.format_time(now)}",
                   f"expires={cv.format_time(expires)}", *restrictions]
        m = mac.mint(self.ring, token_id, caveats)
        meta = TokenMeta(token_id, account, name, m.key_id, level, now, expires, actor.name)
        await self.tokens.put_token(meta)
        if target.kind == "system":  # one token at a time: the new one replaces every active one
            await self._one_token(account, meta, now)
        self.audit("token_issued", user=account, level=level,
                   reason=f"token {token_id} ({name}) by {actor.name}, expires {int(expires)}")
        return Issued(m.serialize(), meta)

    async def _one_token(self, account: str, mine: TokenMeta, now: float) -> None:
        """A service account's one-token rule, also under concurrent issues: after
        the write, every active token but the newest (by created, then id) is
        revoked. Every issuer computes the same newest one, so exactly one
        survives; an issuer whose token lost is told so."""
        active = [t for t in await self.tokens.list_tokens(account) if t.revoked is None]
        if not active:
            return
        newest = max(active, key=lambda t: (t.created, t.id))
        for t in active:
            if t.id != newest.id:
                await self._revoke(t, now, f"replaced by token {newest.id}")
        if newest.id != mine.id:
            raise Conflict(f"another token for {account} was issued at the same moment; this one was revoked, "
                           "issue again")

    async def _revoke(self, meta: TokenMeta, now: float, why: str) -> bool:
        return await revoke_token(self.store, self.audit, meta, now, why)

    async def revoke(self, actor: rules.Actor, token_id: str, now: float | None = None) -> TokenMeta:
        now = time.time() if now is None else now
        meta = await self.tokens.get_token(token_id)
        if meta is None:
            raise NotFound(f"no token {token_id!r}")
        owner = await self.accounts.get_account(meta.account)
        owner_t = target_of(owner) if owner else rules.Target(meta.account, "human", False)
        if not rules.may_revoke(actor, owner_t):
            raise Denied(f"{actor.name} may not revoke tokens of {meta.account}")
        await self._revoke(meta, now, f"revoked by {actor.name}")
        return (await self.tokens.get_token(token_id)) or meta

    async def list(self, actor: rules.Actor, account: str | None) -> list[TokenMeta]:
        if account is None:
            if not actor.is_admin:
                raise Denied("only admins may list every token")
            return await self.tokens.list_tokens()
        if not _may_know(actor, account):
            raise Denied(f"{actor.name} may not list tokens of {account}")
        target = await self.account(account)
        if not rules.may_list(actor, target_of(target)):
            raise Denied(f"{actor.name} may not list tokens of {account}")
        return await self.tokens.list_tokens(account)

    # --- accounts ---------------------------------------------------------

    async def _admin_target(self, actor: rules.Actor, name: str, what: str) -> None:
        if not rules.may_admin(actor):
            raise Denied(f"only admins may {what}")
        if actor is not OPERATOR and name == actor.name:
            raise Denied(f"an admin cannot {what.replace(' accounts', '')} their own account")

    async def create_account(self, actor: rules.Actor, name: str, *, kind: str = "human",
                             display_name: str | None = None, email: str | None = None,
                             roles: Any = ()) -> Account:
        """An account without a password (it may get one with `users passwd`, or use tokens)."""
        if not rules.may_admin(actor):
            raise Denied("only admins may create accounts")
        try:
            return await self.account_service.create(actor.name, name, kind=kind, display_name=display_name,
                                                     email=email, groups=roles)
        except AccountExists as exc:
            raise Conflict(str(exc)) from None

    async def lock(self, actor: rules.Actor, name: str, now: float | None = None) -> Account:
        """AccountService.lock, for admins (not on their own account)."""
        await self._admin_target(actor, name, "lock accounts")
        return await self.account_service.lock(actor.name, name, now)

    async def unlock(self, actor: rules.Actor, name: str, now: float | None = None) -> Account:
        """AccountService.unlock (which lifts the ban for failed attempts too), for admins."""
        await self._admin_target(actor, name, "unlock accounts")
        return await self.account_service.unlock(actor.name, name, now)

    async def set_roles(self, actor: rules.Actor, name: str, roles: Any, now: float | None = None) -> Account:
        """Roles are groups (AccountService.set_groups): a change ends the
        account's sessions and tokens. For admins."""
        if not rules.may_admin(actor):
            raise Denied("only admins may change roles")
        try:
            a, _ = await self.account_service.set_groups(actor.name, name, roles, now)
        except AccountError as exc:
            raise Invalid(f"roles: {exc}") from None
        return a

    async def revoke_sessions(self, actor: rules.Actor, name: str, now: float | None = None) -> float:
        """Sign `name` out everywhere (AccountService.revoke_sessions). Admins
        for anyone; an account for itself. Returns the epoch."""
        if not (rules.may_admin(actor) or (actor.active and actor.name == name)):
            raise Denied(f"{actor.name} may not revoke the sessions of {name}")
        return await self.account_service.revoke_sessions(actor.name, name, now)

    async def delete_account(self, actor: rules.Actor, name: str, now: float | None = None) -> None:
        """AccountService.delete (sessions, tokens, database credentials,
        approving devices, the upstream identity's sessions), for admins (not their own account)."""
        await self._admin_target(actor, name, "delete accounts")
        await self.account_service.delete(actor.name, name, now)

    # --- database credentials --------------------------------------------

    def _sealer(self) -> Sealer:
        return dbcreds_sealer(self.ring)  # at rest ("data" role): opens until re-sealed (keys reseal)

    async def set_dbcreds(self, actor: rules.Actor, account: str, creds: dict[str, Any],
                          now: float | None = None) -> None:
        if not actor.is_admin:
            raise Denied(f"{actor.name} may not set database credentials for {account}")
        target = await self.account(account)
        if not rules.may_set_dbcreds(actor, target_of(target)):
            raise Denied(f"{actor.name} may not set database credentials for {account}")
        clean = validate_dbcreds(creds)
        plain = json.dumps({"account": account, "creds": clean}, separators=(",", ":")).encode()
        sealed = self._sealer().seal(plain)
        await self.tokens.put_dbcreds(account, SealedCreds(sealed, time.time() if now is None else now, actor.name))
        self.audit("dbcreds_set", user=account, reason=f"by {actor.name}")

    async def get_dbcreds(self, actor: rules.Actor, account: str) -> dict[str, Any]:
        operator = actor is OPERATOR  # the CLI holds the key ring: reading is the operator's to do
        if not operator and not (actor.active and (actor.name == account or account in actor.roles)):
            self.audit("dbcreds_read", user=account, reason=f"refused: {actor.name}")
            raise Denied(f"{actor.name} may not read database credentials of {account}")
        target = await self.account(account)
        if not operator and not rules.may_read_dbcreds(actor, target_of(target)):
            self.audit("dbcreds_read", user=account, reason=f"refused: {actor.name}")
            raise Denied(f"{actor.name} may not read database credentials of {account}")
        if operator and target.kind != "system":
            raise NotFound(f"no database credentials for {account} (only service accounts have them)")
        sealed = await self.tokens.get_dbcreds(account)
        if sealed is None:
            raise NotFound(f"no database credentials for {account}")
        try:
            d = json.loads(self._sealer().open(sealed.sealed))
        except (SealError, ValueError):
            raise NotFound(f"the database credentials of {account} do not open with this key ring") from None
        if not isinstance(d, dict) or d.get("account") != account:
            raise NotFound(f"the database credentials of {account} do not open with this key ring")
        self.audit("dbcreds_read", user=account, reason=f"by {actor.name}")
        return d["creds"]


def validate_dbcreds(creds: Any) -> dict[str, Any]:
    if not isinstance(creds, dict) or not creds:
        raise Invalid("database credentials must be an object with host, port, database, username, password")
    unknown = set(creds) - DBCREDS_FIELDS
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(DBCREDS_FIELDS))})")
    out: dict[str, Any] = {}
    for k in ("host", "database", "username", "password"):
        v = creds.get(k)
        if not isinstance(v, str) or not 0 < len(v) <= 512:
            raise Invalid(f"{k} must be a non-empty string of at most 512 characters")
        out[k] = v
    port = creds.get("port", 5432)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise Invalid("port must be an integer from 1 to 65535")
    out["port"] = port
    if "sslmode" in creds:
        if creds["sslmode"] not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
            raise Invalid("sslmode must be a PostgreSQL sslmode")
        out["sslmode"] = creds["sslmode"]
    return out
