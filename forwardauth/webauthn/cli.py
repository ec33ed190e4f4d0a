"""CLI group `webauthn`: list and remove a user's passkeys and security keys.

    forwardauth webauthn list USER [--json]
    forwardauth webauthn remove USER ID|--all

Registering needs the user's own authenticator in their browser, so there is
no `add` here. The CLI acts as the operator (audit: "operator (cli)"); it
never prints a public key, only names, kinds, models, flags and the ids
`remove` takes. No aiohttp here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from forwardauth.core.keyring import b64d
from forwardauth.core.runtime import resolve_state_url
from forwardauth.services.account_names import check_account_name, normalise_username
from forwardauth.services.audit import AuditLog
from forwardauth.services.commands import CliEnv, CliError, Register, SubCommands, with_store
from forwardauth.state import StateStore, open_store
from forwardauth.state.records import AccountError, WebAuthnCredential
from forwardauth.state.records import webauthn_fingerprint as fingerprint

OPERATOR = "operator (cli)"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _account(text: str) -> str:
    try:
        return check_account_name(text if ":" in text else normalise_username(text))
    except AccountError:
        raise argparse.ArgumentTypeError("account names are 1-64 of a-z 0-9 . _ @ + - (starting with a-z 0-9), or "
                                         "<source>:<sub> for an upstream identity's account as listed") from None


def _run(args: argparse.Namespace, env: CliEnv, fn: Callable[[StateStore, AuditLog], Awaitable[int]]) -> int:
    cfg = env.config_or_default(args)
    if cfg.state == "memory://":
        raise CliError("state memory:// lives inside one server process; the CLI cannot reach it")

    async def go() -> int:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        audit = env.audit(cfg)
        try:
            return await fn(store, audit)
        finally:
            audit.close()
            await store.close()

    return asyncio.run(with_store(cfg, go()))


def view(c: WebAuthnCredential) -> dict[str, object]:
    return {"id": c.key, "name": c.name, "kind": "passkey" if c.discoverable else "security key",
            "aaguid": c.aaguid, "transports": list(c.transports), "user_verifying": c.user_verifying,
            "backup_eligible": c.backup_eligible, "backed_up": c.backed_up, "sign_count": c.sign_count,
            "created": c.created, "last_used": c.last_used, "locked": c.locked}


def _cmd_list(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(store: StateStore, audit: AuditLog) -> int:
        creds = await store.webauthn_credentials(args.user)
        if args.json:
            print(json.dumps([view(c) for c in creds], indent=2))
            return 0
        if not creds:
            print(f"{args.user}: no security keys or passkeys")
            return 0
        for c in creds:
            kind = "passkey" if c.discoverable else "security key"
            flags = ["verifies the user" if c.user_verifying else "touch only"]
            if c.backup_eligible:
                flags.append("synced" if c.backed_up else "may sync")
            print(f"{c.key}  {c.name!r}  {kind}; {', '.join(flags)}; model {c.aaguid}; added {_when(c.created)}; "
                  f"last used {_when(c.last_used)}" + (f"; LOCKED: {c.locked}" if c.locked else ""))
        return 0

    return _run(args, env, go)


def _cmd_remove(args: argparse.Namespace, env: CliEnv) -> int:
    if bool(args.id) == bool(args.all):
        raise CliError("give one credential ID (see: forwardauth webauthn list USER) or --all")

    async def go(store: StateStore, audit: AuditLog) -> int:
        if args.all:
            n = await store.remove_webauthn_credentials(args.user)
            if n:
                audit.emit("webauthn_removed", user=args.user, reason=f"all {n} by {OPERATOR}")
            print(f"{args.user}: {n} security key(s) and passkey(s) removed")
            return 0
        try:
            cid = b64d(args.id)
        except ValueError:
            raise CliError(f"not a credential ID: {args.id[:80]!r} (see: forwardauth webauthn list USER)") from None
        cred = next((c for c in await store.webauthn_credentials(args.user) if c.id == cid), None)
        if cred is None or not await store.remove_webauthn_credential(args.user, cid):
            raise CliError(f"{args.user} has no security key or passkey {args.id[:80]!r} "
                           "(see: forwardauth webauthn list USER)")
        audit.emit("webauthn_removed", user=args.user, reason=f"{cred.name!r} by {OPERATOR}; key {fingerprint(cid)}")
        print(f"{args.user}: removed {cred.name!r}")
        return 0

    return _run(args, env, go)


def _register(sub: SubCommands) -> None:
    p = sub.add_parser("webauthn", help="passkeys and security keys: list or remove a user's")
    ws = p.add_subparsers(dest="webauthn_cmd", required=True)
    for name, help_text, func in (
            ("list", "list a user's passkeys and security keys (never a key)", _cmd_list),
            ("remove", "remove one of a user's (by ID, as listed) or all of them (--all)", _cmd_remove)):
        c = ws.add_parser(name, help=help_text)
        c.add_argument("-c", "--config", help="config file (default: the embedded default and --data-dir)")
        c.add_argument("--data-dir", default="./var", help="the embedded default's data directory (default: ./var)")
        c.add_argument("user", type=_account,
                       help="username, or an upstream identity's account as listed (oidc:SUB)")
        if name == "list":
            c.add_argument("--json", action="store_true", help="one JSON array (for scripts)")
        else:
            c.add_argument("id", nargs="?", help="the credential ID, as `list` shows it")
            c.add_argument("--all", action="store_true", help="every one of the user's")
        c.set_defaults(func=func)


def commands() -> tuple[Register, ...]:
    """The command group this part adds: webauthn."""
    return (_register,)
