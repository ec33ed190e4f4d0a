"""`forwardauth users ...`: local accounts from the command line.

    forwardauth users add alice --groups admins      (prompts for the password twice)
    forwardauth users passwd alice --password-stdin < file
    forwardauth users groups alice admins,ops
    forwardauth users lock|unlock|delete alice
    forwardauth users list [--json]
    forwardauth users totp enroll alice              (prints an otpauth URI and a QR code)
    forwardauth users totp reset alice

Without -c the embedded default's data directory is used (like `serve`), so
the commands work on the README's first-run setup. Passwords are read from
the terminal (never echoed) or from stdin, never from an argument, which
would end up in shell history and `ps`. Every change writes an audit line
to the configured audit file (to stderr when the audit log is stdout, which
stays for the command's own output). Every change is made by the account
service (forwardauth.services.accounts) that `forwardauth accounts` and the
admin API use too, so it means the same and is audited the same whichever
is used. Changes that must end existing sessions (password, groups, lock,
delete, TOTP reset) raise the user's revocation epoch: running servers drop
those sessions within the refresh interval.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from forwardauth.core.config import Config
from forwardauth.core.runtime import Runtime, resolve_state_url
from forwardauth.services.account_names import check_account_name, check_username, normalise_username
from forwardauth.services.accounts import OPERATOR, AccountExists, AccountService, NotFound, check_can_have_password
from forwardauth.services.audit import AuditLog
from forwardauth.services.commands import CliEnv, CliError, Register, SubCommands, csv, with_store
from forwardauth.services.passwords import MAX_PASSWORD_CHARS, generate_password, hash_password
from forwardauth.signin.settings import LocalSettings, settings
from forwardauth.signin.totp import SecretBox, new_secret, provisioning_uri, qr_terminal
from forwardauth.state import StateStore, open_store
from forwardauth.state.records import Account, AccountError, check_groups


class Ops:
    """What a command works with: config, settings, and the account service
    (over the store and the audit log) that `accounts` and the admin API use too."""

    def __init__(self, cfg: Config, store: StateStore, audit_log: AuditLog):
        self.cfg = cfg
        self.settings: LocalSettings = settings(cfg)
        self.store = store
        self.audit_log = audit_log
        self.service = AccountService(store, audit_log.emit)

    async def need(self, name: str) -> Account:
        try:
            return await self.service.need(name)
        except NotFound as exc:
            raise CliError(f"{exc} (see: forwardauth users list)") from None


def _run(args: argparse.Namespace, env: CliEnv, fn: Callable[[Ops], Awaitable[int]]) -> int:
    cfg = env.config_or_default(args)
    if cfg.state == "memory://":
        raise CliError("state memory:// lives inside one server process; the CLI cannot reach it")

    async def go() -> int:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        ops = Ops(cfg, store, env.audit(cfg))
        try:
            return await fn(ops)
        except NotFound as exc:
            raise CliError(f"{exc} (see: forwardauth users list)") from None
        except AccountError as exc:
            raise CliError(str(exc)) from None
        finally:
            ops.audit_log.close()
            await store.close()

    return asyncio.run(with_store(cfg, go()))


def _username(text: str) -> str:
    name = normalise_username(text)
    try:
        return check_username(name)
    except AccountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _existing_account(text: str) -> str:
    """An existing account: a typed username (as for `add`), or an upstream
    identity's account exactly as `users list` shows it ("oidc:<sub>"). They
    can be acted on, never made (their TOTP set-up makes them)."""
    if ":" in text:
        try:
            return check_account_name(text)
        except AccountError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return _username(text)


def _read_password(args: argparse.Namespace, ops: Ops, who: str) -> tuple[str, bool]:
    """(password, generated). From --generate, --password-stdin or the terminal (twice)."""
    if getattr(args, "generate", False):
        return generate_password(), True
    if getattr(args, "password_stdin", False):
        pw = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        pw = getpass.getpass(f"New password for {who}: ")
        if getpass.getpass("Again: ") != pw:
            raise CliError("the two passwords differ")
    else:
        raise CliError("no terminal to ask for the password: use --password-stdin or --generate")
    if len(pw) < ops.settings.min_password_length:
        raise CliError(f"the password must have at least {ops.settings.min_password_length} characters "
                       "(local.min_password_length)")
    if len(pw) > MAX_PASSWORD_CHARS:
        raise CliError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    return pw, False


def _show_generated(user: str, pw: str) -> None:
    print(f"{user}: password set. It is shown only now:")
    print(f"  {pw}")


# --- commands ------------------------------------------------------------------


def _cmd_add(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        try:
            groups = check_groups(args.groups or ())
        except AccountError as exc:
            raise CliError(f"--groups: {exc}") from None
        pw_hash, pw, generated = None, None, False
        if args.system:
            if args.generate or args.password_stdin:
                raise CliError("system accounts have no password (they use API tokens)")
        else:
            pw, generated = _read_password(args, ops, args.user)
            pw_hash = hash_password(pw, ops.settings.scrypt)
        try:
            acct = await ops.service.create(OPERATOR, args.user, kind="system" if args.system else "human",
                                            display_name=args.display_name, email=args.email, groups=groups,
                                            password_hash=pw_hash)
        except AccountExists:
            raise CliError(f"account {args.user!r} exists (change it with: forwardauth users passwd|groups)") from None
        if generated and pw:
            _show_generated(args.user, pw)
        else:
            print(f"{args.user}: created ({acct.kind}; groups: {', '.join(groups) or 'none'})")
        return 0

    return _run(args, env, go)


def _cmd_passwd(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        check_can_have_password(await ops.need(args.user))  # before asking for a password
        pw, generated = _read_password(args, ops, args.user)
        await ops.service.set_password(OPERATOR, args.user, hash_password(pw, ops.settings.scrypt))
        if generated:
            _show_generated(args.user, pw)
        else:
            print(f"{args.user}: password changed; existing sessions are signed out")
        return 0

    return _run(args, env, go)


def _cmd_groups(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        acct = await ops.need(args.user)
        groups = list(acct.groups)
        try:
            if args.groups is not None:
                groups = list(check_groups(args.groups))
            for g in check_groups(args.add or ()):
                if g not in groups:
                    groups.append(g)
            drop = set(check_groups(args.remove or ()))
        except AccountError as exc:
            raise CliError(str(exc)) from None
        groups = [g for g in groups if g not in drop]
        if tuple(groups) == acct.groups:
            print(f"{args.user}: groups unchanged: {', '.join(groups) or 'none'}")
            return 0
        # The same rule as `accounts roles` and the API: a change ends the
        # account's sessions and tokens.
        await ops.service.set_groups(OPERATOR, args.user, groups)
        print(f"{args.user}: groups: {', '.join(groups) or 'none'} (signed out, to pick them up at next sign-in)")
        return 0

    return _run(args, env, go)


def _cmd_lock(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        await ops.service.lock(OPERATOR, args.user)
        print(f"{args.user}: locked; existing sessions are signed out")
        return 0

    return _run(args, env, go)


def _cmd_unlock(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        await ops.service.unlock(OPERATOR, args.user)
        print(f"{args.user}: unlocked (and any ban for failed attempts lifted)")
        return 0

    return _run(args, env, go)


def _cmd_delete(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        await ops.service.delete(OPERATOR, args.user)
        print(f"{args.user}: deleted; existing sessions and tokens are revoked")
        return 0

    return _run(args, env, go)


def _row(a: Account) -> dict[str, Any]:
    return {"username": a.username, "kind": a.kind, "status": a.status, "display_name": a.display_name,
            "email": a.email, "groups": list(a.groups), "password": a.password_hash is not None, "totp": a.has_totp,
            "created": int(a.created), "updated": int(a.updated)}


def _cmd_list(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        rows = [_row(a) for a in await ops.service.list_accounts()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no accounts (add one: forwardauth users add NAME)")
            return 0
        print(f"{'USER':<24} {'KIND':<7} {'STATUS':<7} {'TOTP':<5} GROUPS")
        for r in rows:
            print(f"{r['username']:<24} {r['kind']:<7} {r['status']:<7} {'yes' if r['totp'] else 'no':<5} "
                  f"{','.join(r['groups']) or '-'}")
        return 0

    return _run(args, env, go)


def _cmd_totp_enroll(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        acct = await ops.need(args.user)
        if acct.kind != "human":
            raise CliError(f"{args.user} is a system account: it signs in with API tokens only")
        if acct.has_totp and not args.replace:
            raise CliError(f"{args.user} already has TOTP (remove it first: forwardauth users totp reset "
                           f"{args.user}, or pass --replace)")
        rt = Runtime.build(ops.cfg)
        secret = new_secret()
        sealed = SecretBox(rt.keyring).seal(args.user, secret)
        await ops.service.set_totp(OPERATOR, args.user, sealed)
        uri = provisioning_uri(secret, args.user, ops.settings.totp.issuer)
        print(f"{args.user}: TOTP set up. Scan this with the authenticator app, or enter the key by hand.")
        print(f"  key: {secret}")
        print(f"  uri: {uri}")
        if not args.no_qr:
            qr_terminal(uri, sys.stdout)
        return 0

    return _run(args, env, go)


def _cmd_totp_reset(args: argparse.Namespace, env: CliEnv) -> int:
    async def go(ops: Ops) -> int:
        if not await ops.service.reset_totp(OPERATOR, args.user):
            print(f"{args.user}: has no TOTP; nothing to reset")
            return 0
        print(f"{args.user}: TOTP removed; the next page that needs it will guide them through setting it up again")
        return 0

    return _run(args, env, go)


# --- argparse ------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default: the embedded default and --data-dir)")
    p.add_argument("--data-dir", default="./var", help="the embedded default's data directory (default: ./var)")


def _user(p: argparse.ArgumentParser, *, new: bool = False) -> None:
    _common(p)
    if new:
        p.add_argument("user", type=_username, help="username (case-insensitive)")
    else:
        p.add_argument("user", type=_existing_account,
                       help="username (case-insensitive), or an upstream identity's account as listed (oidc:SUB)")


def _password_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    g.add_argument("--generate", action="store_true", help="generate a password and print it once")


def _register(sub: SubCommands) -> None:
    p = sub.add_parser("users", help="local accounts: add, passwd, groups, lock, unlock, delete, list, totp")
    us = p.add_subparsers(dest="users_cmd", required=True)

    a = us.add_parser("add", help="add an account (asks for the password twice)")
    _user(a, new=True)
    a.add_argument("--display-name")
    a.add_argument("--email")
    a.add_argument("--groups", type=csv, default=(), help="comma-separated groups (roles)")
    a.add_argument("--system", action="store_true", help="a system account: API tokens only, never a password")
    _password_source(a)
    a.set_defaults(func=_cmd_add)

    pw = us.add_parser("passwd", help="set a new password (signs the user out everywhere)")
    _user(pw)
    _password_source(pw)
    pw.set_defaults(func=_cmd_passwd)

    g = us.add_parser("groups", help="set, add or remove groups (roles)")
    _user(g)
    g.add_argument("groups", nargs="?", type=csv, help="the new comma-separated list (replaces)")
    g.add_argument("--add", type=csv, help="groups to add")
    g.add_argument("--remove", type=csv, help="groups to remove")
    g.set_defaults(func=_cmd_groups)

    for name, fn, text in (("lock", _cmd_lock, "lock: no sign-in, and existing sessions end"),
                           ("unlock", _cmd_unlock, "unlock, and lift a ban for failed attempts"),
                           ("delete", _cmd_delete, "delete the account and end its sessions")):
        c = us.add_parser(name, help=text)
        _user(c)
        c.set_defaults(func=fn)

    ls = us.add_parser("list", help="list accounts (never their secrets)")
    _common(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    t = us.add_parser("totp", help="TOTP second factor: enroll, reset")
    ts = t.add_subparsers(dest="totp_cmd", required=True)
    e = ts.add_parser("enroll", help="set up TOTP; prints the otpauth URI and a QR code")
    _user(e)
    e.add_argument("--replace", action="store_true", help="replace an existing TOTP secret")
    e.add_argument("--no-qr", action="store_true", help="print the key and URI only")
    e.set_defaults(func=_cmd_totp_enroll)
    r = ts.add_parser("reset", help="remove TOTP (the user is guided to set it up again)")
    _user(r)
    r.set_defaults(func=_cmd_totp_reset)


def commands() -> tuple[Register, ...]:
    """The command group this part adds: users."""
    return (_register,)
