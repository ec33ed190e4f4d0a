"""`forwardauth explain`: how a request would be decided, and why.

It runs the server's own pipeline (core.authorize.Authorizer.judge) on a
request given as a URL: which rules apply to the host, which were skipped
and why, the rule each reading of the path matched, the outcome and the
answer the proxy would get. With `--cookie VALUE` or `--token VALUE` the
credential is checked exactly as the server checks it (the key ring, the
revocation snapshot and the token index read from the state store), so an
operator can ask "what does this very cookie get on this URL". With
`--user` it is a made-up session instead. No aiohttp is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import replace
from typing import Any

from forwardauth import composition
from forwardauth.core import keyring
from forwardauth.core.authorize import HEALTHY, Authorizer, DecisionHooks, Result
from forwardauth.core.config import Config, KeysConfig
from forwardauth.core.credentials import Credential, Source, valid
from forwardauth.core.durations import format_duration
from forwardauth.core.errors import ConfigError
from forwardauth.core.policy import Rule
from forwardauth.core.request import FORWARDED, NGINX, AmbiguousPath, BadRequest, OriginalRequest, build, from_url
from forwardauth.core.runtime import Runtime, resolve_state_url, store_problem
from forwardauth.core.session import Session
from forwardauth.services.commands import CliEnv, CliError, SubCommands, csv, duration
from forwardauth.state import open_store
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.revocations import Revocations

PROXIES = {"nginx": (NGINX, False), "traefik": (FORWARDED, True), "caddy": (FORWARDED, True)}
# Answer headers whose values are credentials: shown by name only.
SECRET_HEADERS = {"set-cookie"}


def register(sub: SubCommands) -> None:
    p = sub.add_parser("explain", help="show how a request would be decided, and why")
    p.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    p.add_argument("--url", required=True, help="the original URL, e.g. https://app.example.com/admin/")
    p.add_argument("--method", default="GET", help="the request method (default: GET)")
    p.add_argument("--client", help="client IP address (for rules with networks)")
    p.add_argument("--user", help="explain for this signed-in user (default: not signed in)")
    p.add_argument("--email", help="the user's email (with --user)")
    p.add_argument("--groups", type=csv, default=(), metavar="A,B",
                   help="the user's groups, comma-separated (with --user)")
    p.add_argument("--level", help="the user's level (default: the lowest)")
    p.add_argument("--proven-ago", type=duration, default=0.0, metavar="DURATION",
                   help="how long ago the level was proven (for max_age), e.g. 20m")
    p.add_argument("--cookie", metavar="VALUE",
                   help="explain for this session cookie's value, checked as the server checks it "
                        "(key ring, expiry, revocations read from the state store)")
    p.add_argument("--token", metavar="VALUE",
                   help="explain for this bearer token (fa1_...), checked as the server checks it")
    p.add_argument("--proxy", choices=sorted(PROXIES), default="nginx",
                   help="whose decision endpoint answers: /auth/nginx (default), /auth/traefik, /auth/caddy")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)
    if args.user and (args.cookie or args.token):
        raise CliError("--user makes up a session: give it, or --cookie/--token, not both")
    try:
        scheme, host, uri = from_url(args.url)
        req = build(method=args.method, scheme=scheme, host=host, uri=uri, forwarded_for=args.client,
                    peer=None, trusted=(), accept="text/html")
    except AmbiguousPath as exc:
        return _refused(args, str(exc))
    except BadRequest as exc:
        raise CliError(f"--url/--method/--client: {exc}") from None
    now = time.time()
    session = None
    if args.user:
        level = args.level or cfg.levels.items[0].name
        if level not in cfg.levels:
            raise CliError(f"--level: unknown level {level!r} (levels: {', '.join(cfg.levels.names)})")
        proven = now - args.proven_ago
        session = Session(sid="explain", sub=args.user, level=level, proofs={level: proven}, iat=proven,
                          exp=now + 3600, email=args.email, groups=args.groups, source="cli", seen=now)
    elif args.level:
        raise CliError("--level needs --user")
    checked = bool(args.cookie or args.token)
    if checked:
        rt = Runtime.build(cfg)
        revocations, hooks = asyncio.run(_load(cfg, rt))
    else:
        rt, revocations, hooks = _runtime_for_policy(cfg), Revocations(), []
    convention, redirects = PROXIES[args.proxy]
    authorizer = Authorizer(rt, convention, redirects=redirects, revocations=revocations, hooks=hooks,
                            policy=composition.store_policy(cfg), endpoint=args.proxy)
    headers = {}
    if args.cookie:
        headers["Cookie"] = f"{cfg.session.cookie_name}={args.cookie}"
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    given = valid(session, Source.NONE) if session is not None else None
    result = authorizer.judge(req, headers, now, HEALTHY, credential=given)
    return _print(args, cfg, req, result, checked)


def _runtime_for_policy(cfg: Config) -> Runtime:
    """The runtime of `cfg`; without a credential to open, the answer does not
    depend on the keys, so a key ring that cannot be read is replaced by a
    throw-away one (explain works on a policy file alone)."""
    try:
        return Runtime.build(cfg)
    except ConfigError:
        key = keyring.generate().current
        return Runtime.build(replace(cfg, keys=KeysConfig(None, ({"id": key.id, "secret": keyring.b64e(key.secret)},))))


async def _load(cfg: Config, rt: Runtime) -> tuple[Revocations, list[DecisionHooks]]:
    """The revocation snapshot and the parts' decision state, read from the state store once."""
    if cfg.state == "memory://":
        raise CliError("state memory:// lives inside one server process: --cookie and --token cannot see "
                       "its revocations")
    store = open_store(resolve_state_url(cfg))
    try:
        await store.open()
        revocations = Revocations()
        if not await revocations.refresh(store):
            raise CliError(store_problem(cfg, StoreUnavailable(revocations.last_error or "no answer")))
        parts = [await load(store, revocations) for load in composition.decision_loaders()]
    except (OSError, StoreUnavailable) as exc:
        raise CliError(store_problem(cfg, exc)) from None
    finally:
        await store.close()
    return revocations, [p.hooks(rt) for p in parts]


def _rule_ref(rule: Rule | None) -> dict[str, Any] | None:
    return None if rule is None else {"rule": rule.index, "name": rule.name}


def _credential(cred: Credential | None) -> dict[str, Any] | None:
    if cred is None:
        return None
    return {"source": cred.source.value, "status": cred.status.value, "reason": cred.reason}


def _answer(result: Result) -> dict[str, Any]:
    ans = result.answer
    headers = [[k, "(not shown)" if k.lower() in SECRET_HEADERS else v] for k, v in ans.headers]
    return {"status": ans.status, "headers": headers, "body": ans.body}


def _print(args: argparse.Namespace, cfg: Config, req: OriginalRequest, result: Result, checked: bool) -> int:
    decision = result.decision
    assert decision is not None
    policy = cfg.policy
    session = decision.session or (result.credential.session if result.credential else None)
    rule, skipped = policy.explain(req.host, req.path, req.method, req.client)
    readings: list[dict[str, Any]] = [
        {"path": p, "method": m, "matched": _rule_ref(policy.match(req.host, p, m, req.client))}
        for m in req.methods for p in req.paths]
    proven_ago = args.proven_ago if args.user else (
        float(int(max(0.0, time.time() - session.auth_time))) if session is not None else None)
    answer = _answer(result)
    out: dict[str, Any] = {
        "request": {"method": req.method, "url": req.url, "host": req.host, "path": req.path,
                    "client": str(req.client) if req.client else None},
        "identity": None if session is None else {"user": session.sub, "groups": list(session.groups),
                                                  "level": session.level, "proven_ago": proven_ago,
                                                  "source": session.source},
        "credential": _credential(result.credential) if checked else None,
        "candidates": len(policy.candidates(req.host)),
        "rules": len(policy.rules),
        "skipped": [{"rule": r.index, "name": r.name, "why": why} for r, why in skipped],
        "matched": _rule_ref(rule),
        "readings": readings,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "required_level": decision.required_level,
        "max_age": decision.max_age,
        "answer": answer,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"request:  {req.method} {req.url}  (matched as path {req.path}"
          + (f", client {req.client})" if req.client else ")"))
    if checked and result.credential is not None:
        c = result.credential
        print(f"credential: {c.source.value if c.source is not Source.NONE else 'none'}: {c.reason}")
    if session is None:
        print("identity: not signed in")
    else:
        ago = format_duration(proven_ago) if proven_ago else "just now"
        print(f"identity: {session.sub} (level {session.level}, proven {ago}; "
              f"groups: {', '.join(session.groups) or 'none'})")
    print(f"rules:    {out['candidates']} of {out['rules']} apply to host {req.host}")
    for r, why in skipped:
        print(f"  skipped {r.label}: {why}")
    print(f"matched:  {rule.label if rule else 'no rule (policy.default = ' + policy.default.value + ')'}")
    if len(readings) > 1:
        print("readings: an app could route this request as any of these; the strictest answer wins")
        for reading in readings:
            ref = reading["matched"]
            label = policy.rules[ref["rule"]].label if ref else "no rule"
            print(f"  {reading['method']} {reading['path']}: {label}")
    print(f"outcome:  {decision.outcome.value}: {decision.reason}")
    print(f"answer:   {answer['status']} from /auth/{args.proxy}")
    for k, v in answer["headers"]:
        print(f"  {k}: {v}")
    return 0


def _refused(args: argparse.Namespace, why: str) -> int:
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
