"""The `forwardauth` command. Each group of subcommands registers itself from
the list at the bottom, so a new part adds one entry, not a new branch here."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from forwardauth import __version__
from forwardauth.core import keyring
from forwardauth.core.config import Config, load_config
from forwardauth.core.decision import decide
from forwardauth.core.durations import format_duration, parse_duration
from forwardauth.core.errors import ConfigError
from forwardauth.core.policy import Rule
from forwardauth.core.request import AmbiguousPath, BadRequest, build, from_url
from forwardauth.core.runtime import Runtime, resolve_state_url, store_problem
from forwardauth.core.sealing import SealError
from forwardauth.core.session import MAX_COOKIE_BYTES
from forwardauth.core.session import MAX_FIELD as MAX_SESSION_FIELD
from forwardauth.core.session import MAX_GROUPS as MAX_SESSION_GROUPS
from forwardauth.state import open_store
from forwardauth.state.base import StoreUnavailable

T = TypeVar("T")


class CliError(Exception):
    """A usage or input problem: printed as one line, exit status 2."""


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# --- serve -------------------------------------------------------------------


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("-c", "--config", help="config file (default: the embedded default, for local use)")
    p.add_argument("--workers", type=int, help="worker processes sharing the port (default: server.workers)")
    p.add_argument("--data-dir", default="./var",
                   help="where the embedded default keeps its keys and state (default: ./var)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from forwardauth.core import logs
    from forwardauth.serve import load_or_default, serve

    logs.setup()
    cfg = load_or_default(args.config, args.data_dir)
    workers = args.workers if args.workers is not None else cfg.server.workers
    if not 1 <= workers <= 64:
        raise CliError("--workers must be from 1 to 64")
    return serve(cfg, workers)


# --- check -------------------------------------------------------------------


def _register_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a config file (exit 0 if valid, 1 with the errors)")
    p.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    Runtime.build(cfg)
    for line in cfg.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{cfg.path}: ok ({len(cfg.levels.items)} levels, {len(cfg.policy.rules)} rules, "
          f"default {cfg.policy.default.value})")
    return 0


# --- explain -----------------------------------------------------------------


def _register_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="show how a request would be decided, and why")
    p.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    p.add_argument("--url", required=True, help="the original URL, e.g. https://app.example.com/admin/")
    p.add_argument("--method", default="GET", help="the request method (default: GET)")
    p.add_argument("--client", help="client IP address (for rules with networks)")
    p.add_argument("--user", help="explain for this signed-in user (default: not signed in)")
    p.add_argument("--email", help="the user's email (with --user)")
    p.add_argument("--groups", type=_csv, default=(), metavar="A,B",
                   help="the user's groups, comma-separated (with --user)")
    p.add_argument("--level", help="the user's level (default: the lowest)")
    p.add_argument("--proven-ago", type=_duration, default=0.0, metavar="DURATION",
                   help="how long ago the level was proven (for max_age), e.g. 20m")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        scheme, host, uri = from_url(args.url)
        req = build(method=args.method, scheme=scheme, host=host, uri=uri, forwarded_for=args.client,
                    peer=None, trusted=(), accept="text/html")
    except AmbiguousPath as exc:
        return _explain_refused(args, str(exc))
    except BadRequest as exc:
        raise CliError(f"--url/--method/--client: {exc}") from None
    now = time.time()
    session = None
    if args.user:
        level = args.level or cfg.levels.items[0].name
        if level not in cfg.levels:
            raise CliError(f"--level: unknown level {level!r} (levels: {', '.join(cfg.levels.names)})")
        from forwardauth.core.session import Session

        proven = now - args.proven_ago
        session = Session(sid="explain", sub=args.user, level=level, proofs={level: proven}, iat=proven,
                          exp=now + 3600, email=args.email, groups=args.groups, source="cli", seen=now)
    elif args.level:
        raise CliError("--level needs --user")
    policy = cfg.policy
    rule, skipped = policy.explain(req.host, req.path, req.method, req.client)
    decision = decide(req, session, policy, cfg.levels, now)
    readings = [{"path": p, "method": m, "matched": _rule_ref(policy.match(req.host, p, m, req.client))}
                for m in req.methods for p in req.paths]
    out = {
        "request": {"method": req.method, "url": req.url, "host": req.host, "path": req.path,
                    "client": str(req.client) if req.client else None},
        "identity": None if session is None else {"user": session.sub, "groups": list(session.groups),
                                                  "level": session.level, "proven_ago": args.proven_ago},
        "candidates": len(policy.candidates(req.host)),
        "rules": len(policy.rules),
        "skipped": [{"rule": r.index, "name": r.name, "why": why} for r, why in skipped],
        "matched": _rule_ref(rule),
        "readings": readings,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "required_level": decision.required_level,
        "max_age": decision.max_age,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"request:  {req.method} {req.url}  (matched as path {req.path}"
          + (f", client {req.client})" if req.client else ")"))
    if session is None:
        print("identity: not signed in")
    else:
        ago = format_duration(args.proven_ago) if args.proven_ago else "just now"
        print(f"identity: {session.sub} (level {session.level}, proven {ago}; "
              f"groups: {', '.join(session.groups) or 'none'})")
    print(f"rules:    {out['candidates']} of {out['rules']} apply to host {req.host}")
    for r, why in skipped:
        print(f"  skipped {r.label}: {why}")
    print(f"matched:  {rule.label if rule else 'no rule (policy.default = ' + policy.default.value + ')'}")
    if len(readings) > 1:
        print("readings: an app could route this request as any of these; the strictest answer wins")
        for r in readings:
            ref = r["matched"]
            label = policy.rules[ref["rule"]].label if ref else "no rule"
            print(f"  {r['method']} {r['path']}: {label}")
    print(f"outcome:  {decision.outcome.value}: {decision.reason}")
    return 0


def _rule_ref(rule: Rule | None) -> dict | None:
    return None if rule is None else {"rule": rule.index, "name": rule.name}


def _explain_refused(args: argparse.Namespace, why: str) -> int:
    """A path no reading can stand for is not judged: the server answers 400."""
    out = {"request": {"method": args.method.upper(), "url": args.url}, "outcome": "refused", "status": 400,
           "reason": why}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"request:  {args.method.upper()} {args.url}")
    print(f"outcome:  refused (400 Bad Request): {why}. An app behind the proxy could route this path as "
          "another one than any forwardauth judges, so it is not judged at all (see README, \"The path "
          "rule\").")
    return 0


# --- keys --------------------------------------------------------------------


def _register_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="manage the key ring")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser("generate", help="write a new key ring, or add a newest key to one (--rotate)")
    g.add_argument("-o", "--output", help="write a new key ring here (refuses to overwrite)")
    g.add_argument("--rotate", metavar="FILE", help="add a new sealing key to FILE; old keys still open")
    g.set_defaults(func=_cmd_keys_generate)
    ls = ks.add_parser("list", help="list the key ids of a key ring file (never the secrets)")
    ls.add_argument("file", help="the key ring file")
    ls.set_defaults(func=_cmd_keys_list)


def _cmd_keys_generate(args: argparse.Namespace) -> int:
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


def _cmd_keys_list(args: argparse.Namespace) -> int:
    ring = _load_ring(args.file)
    for i, k in enumerate(ring.keys):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created)) if k.created else "-"
        print(f"{k.id}\t{'seals+opens' if i == 0 else 'opens'}\tcreated {created}Z")
    for i, sk in enumerate(ring.signing):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sk.created)) if sk.created else "-"
        print(f"{sk.id}\t{sk.alg} {'signs+verifies' if i == 0 else 'verifies'}\tcreated {created}Z")
    return 0


# --- session -----------------------------------------------------------------


def _register_session(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("session", help="issue or revoke sessions")
    ss = p.add_subparsers(dest="session_cmd", required=True)
    i = ss.add_parser("issue", help="print a sealed session cookie value (for operators and tests)")
    i.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    i.add_argument("--user", required=True, help="the user (subject) of the session")
    i.add_argument("--email", help="the user's email")
    i.add_argument("--name", help="the user's display name")
    i.add_argument("--groups", type=_csv, default=(), metavar="A,B", help="the user's groups, comma-separated")
    i.add_argument("--level", required=True, help="the level reached, proven now")
    i.set_defaults(func=_cmd_session_issue)
    r = ss.add_parser("revoke", help="sign a user out everywhere (bump their epoch)")
    r.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    r.add_argument("--user", required=True, help="whose sessions (and tokens) issued until now are revoked")
    r.set_defaults(func=_cmd_session_revoke)


def _cmd_session_issue(args: argparse.Namespace) -> int:
    rt = Runtime.build(_config(args))
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


def _cmd_session_revoke(args: argparse.Namespace) -> int:
    cfg = _config(args)

    async def go() -> float:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            return await store.set_epoch(args.user, time.time())
        finally:
            await store.close()

    epoch = asyncio.run(with_store(cfg, go()))
    from forwardauth.audit import for_cli

    for_cli(cfg).emit("session_revoked", user=args.user, reason="forwardauth session revoke")
    print(f"{args.user}: sessions issued before {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))} "
          f"are revoked (in force within {format_duration(cfg.revocation_refresh)})")
    return 0


async def with_store(cfg: Config, work: Awaitable[T]) -> T:
    """Run `work`, which opens the state store; a store that cannot be opened or
    reached (no such directory, no permission, Redis down) is a CliError."""
    try:
        return await work
    except (OSError, StoreUnavailable) as exc:
        raise CliError(store_problem(cfg, exc)) from None



# --- main --------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_serve,
    _register_check,
    _register_explain,
    _register_keys,
    _register_session,
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forwardauth",
        description="Forward-auth sidecar for nginx, Traefik and Caddy: who gets through, at which level.",
    )
    p.add_argument("--version", action="version", version=f"forwardauth {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    from forwardauth import extensions

    extensions.load()
    for register in COMMANDS:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"forwardauth: {exc}", file=sys.stderr)
        return 2
