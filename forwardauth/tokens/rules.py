"""Who may issue, revoke and read what, for tokens, accounts and database
credentials. Pure (no store, no I/O) and deny by default.

Roles are an account's groups. The rules:
- `admin` may issue and revoke tokens for any account, manage accounts, and
  set service-account database credentials.
- A human may issue and revoke their own tokens (many, each named).
- Holding the role named after a service account allows issuing a token
  for it (which replaces its one token).
- A service account's database credentials are readable by the account
  itself and by holders of the role named after it; nobody else (admins set
  them, and may grant themselves the role if they need to read them).
- Locked accounts may do nothing and get nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Actor:
    """Who is asking: an account name, its kind and its roles (groups)."""

    name: str
    kind: str = "human"
    roles: tuple[str, ...] = ()
    active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.active and ADMIN_ROLE in self.roles


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    active: bool = True


def may_issue(actor: Actor, target: Target) -> bool:
    if not actor.active or not target.active:
        return False
    if actor.is_admin:
        return True
    if target.kind == "system":
        return actor.kind == "human" and target.name in actor.roles
    return actor.kind == "human" and actor.name == target.name


def may_revoke(actor: Actor, owner: Target) -> bool:
    if not actor.active:
        return False
    if actor.is_admin:
        return True
    return owner.kind == "human" and actor.kind == "human" and actor.name == owner.name


def may_list(actor: Actor, owner: Target) -> bool:
    if not actor.active:
        return False
    if actor.is_admin or actor.name == owner.name:
        return True
    return owner.kind == "system" and owner.name in actor.roles


def may_read_dbcreds(actor: Actor, owner: Target) -> bool:
    if not actor.active or not owner.active or owner.kind != "system":
        return False
    return actor.name == owner.name or (actor.kind == "human" and owner.name in actor.roles)


def may_set_dbcreds(actor: Actor, owner: Target) -> bool:
    return actor.is_admin and owner.kind == "system"


def may_admin(actor: Actor) -> bool:
    """Accounts and roles: admins only."""
    return actor.is_admin
