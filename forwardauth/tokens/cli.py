"""CLI groups `accounts`, `tokens` (alias `token`) and `dbcreds`.

The CLI runs as the operator: it holds the key ring and the state store, so
it acts with the admin role (as "operator (cli)" in the audit log). It
never prints a token except the one `tokens issue` / `tokens attenuate` was
asked to make, and that goes alone on stdout so it can be captured.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from forwardauth.core.durations import parse_duration
from forwardauth.core.runtime import Runtime, resolve_state_url, store_problem
from forwardauth.services.account_names import USERNAME_RE, check_account_name
from forwardauth.services.commands import CliEnv, CliError, Register, SubCommands
from forwardauth.state import StateStore, StoreUnavailable, open_store
from forwardauth.state.records import Account, AccountError, TokenMeta, check_groups
from forwardauth.tokens import caveats as cv
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens.service import OPERATOR, Conflict, Denied, Invalid, NotFound, TokenService


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _run(args: argparse.Namespace, env: CliEnv, fn: Callable[[TokenService, StateStore], Awaitable[int]]) -> int:
    cfg = env.config(args)
    rt = Runtime.build(cfg)

    async def go() -> int:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            return await fn(TokenService(cfg, rt.keyring, store, env.audit(cfg).emit), store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except (Denied, Invalid, Conflict, AccountError) as exc:
        raise CliError(str(exc)) from None
    except NotFound as exc:
        raise CliError(str(exc.args[0]) if exc.args else "not found") from None
    except StoreUnavailable as exc:
        raise CliError(store_problem(cfg, exc)) from None


def _account_name(text: str) -> str:
    if not USERNAME_RE.match(text):
        raise argparse.ArgumentTypeError("account names are 1-64 of a-z 0-9 . _ @ + - (starting with a-z 0-9)")
    return text


def _existing_name(text: str) -> str:
    """An existing account: as for `_account_name`, or an upstream identity's
    account exactly as `accounts list` shows it ("oidc:<sub>")."""
    try:
        return check_account_name(text)
    except AccountError:
        raise argparse.ArgumentTypeError("account names are 1-64 of a-z 0-9 . _ @ + - (starting with a-z 0-9), or "
                                         "<source>:<sub> for an upstream identity's account as listed") from None


def _dur(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- accounts ----------------------------------------------------------------


def _register_accounts(sub: SubCommands) -> None:
    p = sub.add_parser("accounts", help="human and service accounts, roles, locking")
    s = p.add_subparsers(dest="accounts_cmd", required=True)
    c = s.add_parser("create", help="create an account")
    c.add_argument("name", type=_account_name)
    c.add_argument("--kind", choices=("human", "system"), default="human")
    c.add_argument("--roles", default="", help="comma-separated roles (e.g. admin, or a service account's name)")
    c.add_argument("--email")
    c.add_argument("--display-name")
    c.set_defaults(func=_cmd_create)
    ls = s.add_parser("list", help="list accounts")
    ls.set_defaults(func=_cmd_list_accounts)
    sh = s.add_parser("show", help="show one account (never its secrets)")
    sh.add_argument("name", type=_existing_name)
    sh.set_defaults(func=_cmd_show)
    r = s.add_parser("roles", help="set an account's roles (a change ends its sessions and tokens, "
                                   "as `users groups` does)")
    r.add_argument("name", type=_existing_name)
    r.add_argument("--set", required=True, dest="roles", help="comma-separated roles ('' for none)")
    r.set_defaults(func=_cmd_roles)
    lk = s.add_parser("lock", help="lock: every session and token of the account dies at once "
                                   "(epoch to the far future)")
    lk.add_argument("name", type=_existing_name)
    lk.set_defaults(func=_cmd_lock)
    ul = s.add_parser("unlock", help="set the status back to active and lift any ban for failed attempts; what "
                                     "was issued before stays revoked")
    ul.add_argument("name", type=_existing_name)
    ul.set_defaults(func=_cmd_unlock)
    d = s.add_parser("delete", help="delete an account: its tokens are revoked, its sessions end (an upstream "
                                    "identity's too) and its database credentials are deleted")
    d.add_argument("name", type=_existing_name)
    d.set_defaults(func=_cmd_delete)
    for sp in (c, ls, sh, r, lk, ul, d):
        sp.add_argument("-c", "--config", required=True)


def _show_account(a: Account) -> str:
    return (f"{a.username}\t{a.kind}\t{a.status}\troles={','.join(a.groups) or '-'}\t"
            f"email={a.email or '-'}\tpassword={'yes' if a.password_hash else 'no'}\t"
            f"totp={'yes' if a.totp_secret_enc else 'no'}")


def _cmd_create(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        a = await svc.create_account(OPERATOR, args.name, kind=args.kind, email=args.email,
                                     display_name=args.display_name, roles=args.roles)
        print(_show_account(a))
        return 0

    return _run(args, env, fn)


def _cmd_list_accounts(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        for a in await svc.accounts.list_accounts():
            print(_show_account(a))
        return 0

    return _run(args, env, fn)


def _cmd_show(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        print(_show_account(await svc.account(args.name)))
        return 0

    return _run(args, env, fn)


def _cmd_roles(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        before = await svc.account(args.name)
        a = await svc.set_roles(OPERATOR, args.name, check_groups(args.roles))
        print(_show_account(a))
        if before.groups != a.groups:
            print(f"{a.username}: roles changed: sessions and tokens issued until now are revoked", file=sys.stderr)
        return 0

    return _run(args, env, fn)


def _cmd_lock(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        a = await svc.lock(OPERATOR, args.name)
        print(f"{a.username}: locked; every session and token is revoked")
        return 0

    return _run(args, env, fn)


def _cmd_unlock(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        a = await svc.unlock(OPERATOR, args.name)
        print(f"{a.username}: active again; sessions and tokens from before the unlock stay revoked")
        return 0

    return _run(args, env, fn)


def _cmd_delete(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        await svc.delete_account(OPERATOR, args.name)
        print(f"{args.name}: deleted; its tokens and sessions are revoked, its database credentials removed")
        return 0

    return _run(args, env, fn)


# --- tokens ------------------------------------------------------------------


def _register_tokens(sub: SubCommands) -> None:
    p = sub.add_parser("tokens", aliases=["token"], help="API tokens: issue, list, revoke, attenuate, inspect")
    s = p.add_subparsers(dest="tokens_cmd", required=True)
    i = s.add_parser("issue", help="issue a token (printed once, alone on stdout)")
    i.add_argument("-c", "--config", required=True)
    i.add_argument("--account", required=True, type=_account_name)
    i.add_argument("--name", default="default", help="a name to tell the account's tokens apart")
    i.add_argument("--lifetime", type=_dur, help="default: tokens.default_lifetime (30d)")
    i.add_argument("--level", help="default: the account's token level (tokens.levels / default_level)")
    i.add_argument("--as", dest="actor", type=_account_name,
                   help="issue as this account, applying its rights (default: the operator, an admin)")
    _restrictions(i)
    i.set_defaults(func=_cmd_issue)
    ls = s.add_parser("list", help="list tokens with their last use (never the tokens themselves)")
    ls.add_argument("-c", "--config", required=True)
    ls.add_argument("--account", type=_account_name)
    ls.set_defaults(func=_cmd_list_tokens)
    r = s.add_parser("revoke", help="revoke one token by id (in force on every replica within seconds)")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("token_id")
    r.set_defaults(func=_cmd_revoke)
    a = s.add_parser("attenuate", help="print a narrower copy of TOKEN (offline: needs no key)")
    a.add_argument("token", help="the token, or - to read it from stdin")
    a.add_argument("--expires", type=_dur, metavar="DURATION", help="dead after this long from now, e.g. 1h")
    _restrictions(a)
    a.set_defaults(func=_cmd_attenuate)
    n = s.add_parser("inspect", help="show a token's ids and caveats (with -c: verify it too)")
    n.add_argument("token", help="the token, or - to read it from stdin")
    n.add_argument("-c", "--config", help="verify the signature and the record against this config")
    n.set_defaults(func=_cmd_inspect)
    j = s.add_parser("jwt-secret", help="write a new HS512 shared secret (for tokens.jwt.algorithm: HS512)")
    j.add_argument("-o", "--output", required=True)
    j.set_defaults(func=_cmd_jwt_secret)


def _restrictions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="only for this host")
    p.add_argument("--path", help="only under this path prefix, e.g. /api/read")
    p.add_argument("--method", help="only these methods, e.g. GET or GET,HEAD")


def _restriction_caveats(args: argparse.Namespace) -> list[str]:
    out = []
    for key, value in (("host", args.host and args.host.lower().rstrip(".")), ("path", args.path),
                       ("method", args.method and args.method.upper())):
        if value is None:
            continue
        try:
            out.append(cv.make(key, value))
        except cv.CaveatError as exc:
            raise CliError(f"--{key}: {exc}: {value!r}") from None
    return out


def _token_line(t: TokenMeta) -> str:
    status = "revoked " + _when(t.revoked) if t.revoked else ("expired" if t.expires <= time.time() else "active")
    return (f"{t.id}\t{t.account}\t{t.name}\t{t.level}\tcreated {_when(t.created)}\texpires {_when(t.expires)}\t"
            f"last used {_when(t.last_used)}\t{status}")


def _cmd_issue(args: argparse.Namespace, env: CliEnv) -> int:
    restrictions = tuple(_restriction_caveats(args))

    async def fn(svc: TokenService, store: StateStore) -> int:
        actor = OPERATOR if args.actor is None else await svc.actor(args.actor)
        issued = await svc.issue(actor, args.account, name=args.name, lifetime=args.lifetime, level=args.level,
                                 restrictions=restrictions)
        print(f"issued {issued.meta.id} for {issued.meta.account} (level {issued.meta.level}, "
              f"expires {_when(issued.meta.expires)})", file=sys.stderr)
        print(issued.token)
        return 0

    return _run(args, env, fn)


def _cmd_list_tokens(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        for t in await svc.list(OPERATOR, args.account):
            print(_token_line(t))
        return 0

    return _run(args, env, fn)


def _cmd_revoke(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        t = await svc.revoke(OPERATOR, args.token_id)
        print(_token_line(t))
        return 0

    return _run(args, env, fn)


def _read_token(text: str) -> mac.Macaroon:
    if text == "-":
        text = sys.stdin.readline().strip()
    try:
        return mac.deserialize(text.strip())
    except mac.TokenError as exc:
        raise CliError(f"not a valid token: {exc}") from None


def _cmd_attenuate(args: argparse.Namespace, env: CliEnv) -> int:
    m = _read_token(args.token)
    added = []
    if args.expires is not None:
        added.append(f"expires={cv.format_time(time.time() + args.expires)}")
    added += _restriction_caveats(args)
    if not added:
        raise CliError("give at least one of --expires, --host, --path, --method")
    try:
        cv.parse(list(m.caveats) + added)
        for c in added:
            m = m.add_caveat(c)
        print(m.serialize())
    except (cv.CaveatError, mac.TokenError) as exc:
        raise CliError(f"cannot attenuate: {exc}") from None
    return 0


def _cmd_inspect(args: argparse.Namespace, env: CliEnv) -> int:
    m = _read_token(args.token)
    key_id, token_id = mac.parse_identifier(m.identifier)
    out: dict[str, Any] = {"token_id": token_id, "key_id": key_id, "caveats": list(m.caveats)}
    try:
        claims = cv.parse(m.caveats)
        out["account"] = claims.account
        out["expires"] = _when(claims.expires)
        out["issued"] = _when(claims.issued)
    except cv.CaveatError as exc:
        out["caveat_problem"] = str(exc)
    if args.config:
        async def fn(svc: TokenService, store: StateStore) -> int:
            try:
                mac.verify_signature(svc.ring, m)
                out["signature"] = "valid"
            except mac.TokenError as exc:
                out["signature"] = f"INVALID: {exc}"
            meta = await svc.tokens.get_token(token_id)
            out["record"] = "none" if meta is None else ("revoked" if meta.revoked else "active")
            if meta is not None:
                out["last_used"] = _when(meta.last_used)
            return 0

        _run(args, env, fn)
    print(json.dumps(out, indent=2))
    return 0


def _cmd_jwt_secret(args: argparse.Namespace, env: CliEnv) -> int:
    from forwardauth.tokens.jwt import new_hs512_secret

    p = Path(args.output)
    if p.exists():
        raise CliError(f"{p} exists")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch(mode=0o600)
    p.write_text(new_hs512_secret() + "\n")
    print(f"{p}: new HS512 secret (share it with the apps that verify; keep it mode 0600)")
    return 0


# --- dbcreds -------------------------------------------------------------------


def _register_dbcreds(sub: SubCommands) -> None:
    p = sub.add_parser("dbcreds", help="database credentials of service accounts (encrypted at rest)")
    s = p.add_subparsers(dest="dbcreds_cmd", required=True)
    st = s.add_parser("set", help="set them (the password is read from stdin or prompted, never an argument)")
    st.add_argument("-c", "--config", required=True)
    st.add_argument("account", type=_account_name)
    st.add_argument("--host", required=True)
    st.add_argument("--port", type=int, default=5432)
    st.add_argument("--database", required=True)
    st.add_argument("--username", required=True)
    st.add_argument("--sslmode")
    st.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    st.set_defaults(func=_cmd_dbcreds_set)
    g = s.add_parser("get", help="print them as JSON")
    g.add_argument("-c", "--config", required=True)
    g.add_argument("account", type=_account_name)
    g.add_argument("--as", dest="actor", type=_account_name,
                   help="read as this account, applying its rights (default: the operator, audited as "
                        "'operator (cli)')")
    g.set_defaults(func=_cmd_dbcreds_get)


def _cmd_dbcreds_set(args: argparse.Namespace, env: CliEnv) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("database password: ")
    creds: dict[str, Any] = {"host": args.host, "port": args.port, "database": args.database,
                             "username": args.username, "password": password}
    if args.sslmode:
        creds["sslmode"] = args.sslmode

    async def fn(svc: TokenService, store: StateStore) -> int:
        await svc.set_dbcreds(OPERATOR, args.account, creds)
        print(f"{args.account}: database credentials set")
        return 0

    return _run(args, env, fn)


def _cmd_dbcreds_get(args: argparse.Namespace, env: CliEnv) -> int:
    async def fn(svc: TokenService, store: StateStore) -> int:
        # The operator holds the key ring: reading is theirs to do (audited as "operator (cli)").
        actor = OPERATOR if args.actor is None else await svc.actor(args.actor)
        print(json.dumps(await svc.get_dbcreds(actor, args.account), indent=2))
        return 0

    return _run(args, env, fn)



def commands() -> tuple[Register, ...]:
    """The command groups this part adds: accounts, tokens (alias token), dbcreds."""
    return (_register_accounts, _register_tokens, _register_dbcreds)
