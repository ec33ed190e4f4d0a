"""The `forwardauth` command: the core's commands (serve, check, explain, keys,
session, state), then each part's command groups (composition.commands()), in part
order. Every command runs as `func(args, env)` with the composition's
`CliEnv` (services.commands). `check` and `explain` import no aiohttp."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from forwardauth import __version__, composition, explain
from forwardauth.core import keyring
from forwardauth.core.config import Config
from forwardauth.core.credentials import MAX_COOKIE_BYTES
from forwardauth.core.durations import format_duration
from forwardauth.core.errors import ConfigError
from forwardauth.core.runtime import Runtime, resolve_path, resolve_state_url
from forwardauth.core.sealing import SealError
from forwardauth.core.session import MAX_FIELD as MAX_SESSION_FIELD
from forwardauth.core.session import MAX_GROUPS as MAX_SESSION_GROUPS
from forwardauth.services import keys as keys_service
from forwardauth.services.apart import is_large, load_apart
from forwardauth.services.commands import CliEnv, CliError, Register, SubCommands, csv, with_store
from forwardauth.state import StateStore, open_store

T = TypeVar("T")

# --- serve -------------------------------------------------------------------


def _register_serve(sub: SubCommands) -> None:
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("-c", "--config", help="config file (default: the embedded default, for local use)")
    p.add_argument("--workers", type=int, help="worker processes sharing the port (default: server.workers)")
    p.add_argument("--data-dir", default="./var",
                   help="where the embedded default keeps its keys and state (default: ./var)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace, env: CliEnv) -> int:
    from forwardauth.core import logs

    logs.setup()
    cfg = _serve_config(args, env)
    workers = args.workers if args.workers is not None else cfg.server.workers
    if not 1 <= workers <= 64:
        raise CliError("--workers must be from 1 to 64")
    return composition.serve(cfg, workers)




def _serve_config(args: argparse.Namespace, env: CliEnv) -> Config:
    """The config to serve. A large one (a policy of thousands of rules) is
    parsed in a child process while this one imports the web stack: start-up
    takes the longer of the two, not their sum, and the parse's peak memory
    stays in the child (services/apart.py)."""
    if args.config:
        if is_large(args.config):
            try:
                return load_apart(env.load, args.config, meanwhile=composition.web_stack)
            except (OSError, BrokenProcessPool):
                pass  # no child process here: parsed in this one
    return env.config_or_default(args)


# --- check -------------------------------------------------------------------


def _register_check(sub: SubCommands) -> None:
    p = sub.add_parser("check", help="validate a config file (exit 0 if valid, 1 with the errors)")
    p.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)
    Runtime.build(cfg)
    for line in cfg.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{cfg.path}: ok ({len(cfg.levels.items)} levels, {len(cfg.policy.rules)} rules, "
          f"default {cfg.policy.default.value})")
    return 0


# --- keys --------------------------------------------------------------------


def _register_keys(sub: SubCommands) -> None:
    p = sub.add_parser("keys", help="manage the key ring")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser("generate", help="write a new key ring, or add a newest key to one (--rotate)")
    g.add_argument("-o", "--output", help="write a new key ring here (refuses to overwrite)")
    g.add_argument("--rotate", metavar="FILE", help="add a new sealing key to FILE; old keys still open")
    g.set_defaults(func=_cmd_keys_generate)
    ls = ks.add_parser("list", help="list the key ids of a key ring file and their roles (never the secrets)")
    ls.add_argument("file", help="the key ring file")
    ls.set_defaults(func=_cmd_keys_list)
    rt = ks.add_parser("retire", help="stop a key opening cookies (its sessions end); its data at rest still opens")
    rt.add_argument("file", help="the key ring file")
    rt.add_argument("key_id", help="the key (not the first one)")
    rt.set_defaults(func=_cmd_keys_retire)
    rs = ks.add_parser("reseal", help="seal TOTP secrets and database credentials anew under the first key")
    rs.add_argument("-c", "--config", required=True, help="the config file (YAML): its key ring and state store")
    rs.set_defaults(func=_cmd_keys_reseal)
    rm = ks.add_parser("remove", help="remove a key from the config's key ring, after saying what that retires")
    rm.add_argument("-c", "--config", required=True, help="the config file (YAML): its key ring and state store")
    rm.add_argument("key_id", help="the key (not the first one)")
    rm.add_argument("--force", action="store_true",
                    help="remove it although tokens or data at rest still need it (they stop working)")
    rm.set_defaults(func=_cmd_keys_remove)


def _cmd_keys_generate(args: argparse.Namespace, env: CliEnv) -> int:
    if args.rotate and args.output:
        raise CliError("give either -o FILE or --rotate FILE")
    if args.rotate:
        ring = keyring.rotate(_load_ring(args.rotate))
        ring.save(args.rotate)
        print(f"{args.rotate}: new sealing key {ring.current.id} and signing key {ring.signing[0].id}; "
              f"{len(ring.keys)} keys in the ring")
        return 0
    ring = keyring.generate()
    if not args.output:
        print(ring.to_json())
        return 0
    if Path(args.output).exists():
        raise CliError(f"{args.output} exists; use --rotate {args.output} to add a key")
    ring.save(args.output)
    print(f"{args.output}: new key ring with key {ring.current.id}")
    return 0


def _load_ring(path: str) -> keyring.KeyRing:
    try:
        return keyring.KeyRing.load(path)
    except keyring.KeyRingError as exc:
        raise CliError(str(exc)) from None


def _cmd_keys_list(args: argparse.Namespace, env: CliEnv) -> int:
    ring = _load_ring(args.file)
    for i, k in enumerate(ring.keys):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created)) if k.created else "-"
        print(f"{k.id}\t{'seals+opens' if i == 0 else 'opens'} {'+'.join(k.roles)}\tcreated {created}Z")
    for i, sk in enumerate(ring.signing):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sk.created)) if sk.created else "-"
        print(f"{sk.id}\t{sk.alg} {'signs+verifies' if i == 0 else 'verifies'}\tcreated {created}Z")
    return 0


def _cmd_keys_retire(args: argparse.Namespace, env: CliEnv) -> int:
    try:
        ring = keyring.retire(_load_ring(args.file), args.key_id, "cookies")
    except keyring.KeyRingError as exc:
        raise CliError(str(exc)) from None
    ring.save(args.file)
    print(f"{args.file}: {args.key_id} no longer opens cookies once every process reloads (SIGHUP): sessions, "
          "login states and forms sealed under it end. Its data at rest (TOTP secrets, database credentials, "
          "the roots of API tokens minted under it) still opens; `keys reseal` seals the data anew, and "
          "`keys remove` says what else still needs it.")
    return 0


def _ring_file(cfg: Config) -> str:
    if not cfg.keys.file:
        raise CliError("this config's keys are inline (keys.inline): edit them there")
    return str(resolve_path(cfg, cfg.keys.file))


def _store_work(cfg: Config, work: Callable[[StateStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(with_store(cfg, go()))


def _cmd_keys_reseal(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)
    ring = Runtime.build(cfg).keyring
    done = _store_work(cfg, lambda store: keys_service.reseal(store, ring))
    print(f"sealed anew under {ring.current.id}: {done.totp} TOTP secrets, {done.dbcreds} database credentials")
    if done.unreadable:
        print(f"these no longer open with this key ring (their key was removed): {', '.join(done.unreadable)}; "
              "reset them (users totp reset, dbcreds set)")
        return 1
    return 0


def _cmd_keys_remove(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)
    path = _ring_file(cfg)
    ring = _load_ring(path)
    try:
        smaller = keyring.remove(ring, args.key_id)
    except keyring.KeyRingError as exc:
        raise CliError(str(exc)) from None
    key = ring.get(args.key_id)
    assert key is not None
    deps = _store_work(cfg, lambda store: keys_service.dependents(store, args.key_id))
    print(f"removing {args.key_id} retires:")
    print("  cookies: " + ("every session, login state and form sealed under it (their holders sign in again)"
                           if "cookies" in key.roles else "none (retired already)"))
    print(f"  API tokens minted under it, still valid: {len(deps.tokens)}"
          + (f" ({', '.join(deps.tokens)}; issue new ones)" if deps.tokens else ""))
    print(f"  TOTP secrets sealed under it: {len(deps.totp)}" + (f" ({', '.join(deps.totp)})" if deps.totp else ""))
    print(f"  database credentials sealed under it: {len(deps.dbcreds)}"
          + (f" ({', '.join(deps.dbcreds)})" if deps.dbcreds else ""))
    if deps.at_rest and not args.force:
        raise CliError(f"not removed: {deps.at_rest} things stored still need {args.key_id} "
                       "(`keys reseal` seals TOTP secrets and database credentials anew; tokens must be issued "
                       "again); --force removes it anyway")
    smaller.save(path)
    print(f"{path}: {args.key_id} removed; it takes effect when every process reloads (SIGHUP)")
    return 0


# --- session -----------------------------------------------------------------


def _register_session(sub: SubCommands) -> None:
    p = sub.add_parser("session", help="issue or revoke sessions")
    ss = p.add_subparsers(dest="session_cmd", required=True)
    i = ss.add_parser("issue", help="print a sealed session cookie value (for operators and tests)")
    i.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    i.add_argument("--user", required=True, help="the user (subject) of the session")
    i.add_argument("--email", help="the user's email")
    i.add_argument("--name", help="the user's display name")
    i.add_argument("--groups", type=csv, default=(), metavar="A,B", help="the user's groups, comma-separated")
    i.add_argument("--level", required=True, help="the level reached, proven now")
    i.set_defaults(func=_cmd_session_issue)
    r = ss.add_parser("revoke", help="sign a user out everywhere (bump their epoch)")
    r.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    r.add_argument("--user", required=True, help="whose sessions (and tokens) issued until now are revoked")
    r.set_defaults(func=_cmd_session_revoke)


def _cmd_session_issue(args: argparse.Namespace, env: CliEnv) -> int:
    rt = Runtime.build(env.config(args))
    if args.level not in rt.config.levels:
        raise CliError(f"--level: unknown level {args.level!r} (levels: {', '.join(rt.config.levels.names)})")
    now = time.time()
    s = rt.codec.new(args.user, args.level, now, email=args.email, name=args.name, groups=args.groups,
                     source="cli")
    try:
        value = rt.codec.seal(s)
    except SealError:
        value = ""
    # Print only a cookie the server will open: one over the size limit, or with a
    # field longer than a session may hold, would be "not signed in" everywhere.
    opened = rt.codec.open(value, now)
    if opened.session is None:
        raise CliError(f"this session does not fit in a cookie ({opened.reason if value else 'too large'}): "
                       f"--user, --email and --name hold at most {MAX_SESSION_FIELD} characters each, --groups "
                       f"at most {MAX_SESSION_GROUPS} groups, and the sealed cookie at most {MAX_COOKIE_BYTES} "
                       "bytes")
    print(value)
    return 0


def _cmd_session_revoke(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)

    async def go() -> float:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            return await store.set_epoch(args.user, time.time())
        finally:
            await store.close()

    epoch = asyncio.run(with_store(cfg, go()))
    env.audit(cfg).emit("session_revoked", user=args.user, reason="forwardauth session revoke")
    print(f"{args.user}: sessions issued before {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))} "
          f"are revoked (in force within {format_duration(cfg.revocation_refresh)})")
    return 0



# --- state -------------------------------------------------------------------


def _register_state(sub: SubCommands) -> None:
    p = sub.add_parser("state", help="the state store's continuity (see README: When things break)")
    ss = p.add_subparsers(dest="state_cmd", required=True)
    st = ss.add_parser("status", help="is the store known good? (exit 0 when it is, 1 with the reason)")
    st.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    st.set_defaults(func=_cmd_state_status)
    ack = ss.add_parser("ack", help="the store as it is now is the truth: clear a recorded loss of its data, "
                                    "or end a new Redis store's wait")
    ack.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    ack.set_defaults(func=_cmd_state_ack)


def _cmd_state_status(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)

    async def go() -> str | None:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            await store.revocation_version()  # reads the marker / the recorded loss
            return store.problem()
        finally:
            await store.close()

    problem = asyncio.run(with_store(cfg, go()))
    if problem is not None:
        print(problem)
        return 1
    print("ok")
    return 0


def _cmd_state_ack(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)

    async def go() -> str:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            return await store.acknowledge()
        finally:
            await store.close()

    print(asyncio.run(with_store(cfg, go())))
    return 0


# --- main --------------------------------------------------------------------

COMMANDS: tuple[Register, ...] = (_register_serve, _register_check, explain.register, _register_keys,
                                  _register_session, _register_state)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forwardauth",
        description="Forward-auth sidecar for nginx, Traefik and Caddy: who gets through, at which level.",
        epilog="environment: FORWARDAUTH_CACHE_DIR where the YAML value of a config of 256 KB or more is kept "
               "between runs (default $XDG_CACHE_HOME/forwardauth or ~/.cache/forwardauth; empty: off)",
    )
    p.add_argument("--version", action="version", version=f"forwardauth {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for register in (*COMMANDS, *composition.commands()):
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args, composition.cli_env()))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"forwardauth: {exc}", file=sys.stderr)
        return 2
