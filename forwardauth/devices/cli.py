"""The CLI of device approval (composition.PARTS lists `commands()`):

- `forwardauth device pair|watch|forget`: this machine as an approving device
  (the client, devices.client, with aiohttp's HTTP client: imported when such
  a command runs, so `forwardauth check` and `explain` do not pay for it);
- `forwardauth devices list|remove`: an administrator's view of any user's
  devices, on the configured state store (removing one stops it at once).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

from forwardauth.core.runtime import resolve_state_url
from forwardauth.services.commands import CliEnv, CliError, Register, SubCommands, with_store
from forwardauth.state import open_store


def commands() -> tuple[Register, ...]:
    return (register, register_admin)


def register(sub: SubCommands) -> None:
    p = sub.add_parser("device", help="use this machine as an approving device (pair, watch, forget)",
                       description="Approve sign-ins from this machine: pair it once with a code from the "
                                   "devices page, then watch for approval requests.")
    dsub = p.add_subparsers(dest="device_command", required=True)

    pp = dsub.add_parser("pair", help="exchange a pairing code for this device's credential")
    pp.add_argument("url", help="the server (https://auth.example.com) or the pairing URL the devices page shows")
    pp.add_argument("code", nargs="?", help="the pairing code (not needed when URL is the pairing URL)")
    pp.add_argument("--name", default=None, help="how the devices page lists this device (default: host name)")
    _file_option(pp)
    pp.set_defaults(func=_cmd_pair)

    pw = dsub.add_parser("watch", help="wait for approval requests and answer them")
    pw.add_argument("--once", action="store_true",
                    help="stop after answering one request: exit 0 if approved, 1 if not (for scripts)")
    _file_option(pw)
    pw.set_defaults(func=_cmd_watch)

    pf = dsub.add_parser("forget", help="remove this device on the server and delete its credential here")
    _file_option(pf)
    pf.set_defaults(func=_cmd_forget)


def _file_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", type=Path, default=None,
                   help="the credential file (default: $XDG_CONFIG_HOME/forwardauth/device.json, "
                        "readable by its owner only)")


def _path(args: argparse.Namespace) -> Path:
    from forwardauth.devices.client import default_file

    return args.file or default_file()


def _run(work: object) -> int:
    from forwardauth.devices.client import ClientError

    try:
        return asyncio.run(work)  # type: ignore[arg-type]
    except ClientError as exc:
        print(f"forwardauth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _cmd_pair(args: argparse.Namespace, env: CliEnv) -> int:
    from forwardauth.devices.client import pair

    async def go() -> int:
        saved = await pair(args.url, args.code, args.name or socket.gethostname()[:64] or "device", _path(args))
        print(f"paired as {saved.name!r} with {saved.url}; credential saved in {_path(args)}")
        return 0

    return _run(go())


def _cmd_watch(args: argparse.Namespace, env: CliEnv) -> int:
    from forwardauth.devices.client import Watcher, load

    async def go() -> int:
        saved = load(_path(args))
        print(f"watching {saved.url} as {saved.name!r} (Ctrl-C to stop)", flush=True)
        return await Watcher(saved, ask_stdin, say).run(once=args.once)

    return _run(go())


def _cmd_forget(args: argparse.Namespace, env: CliEnv) -> int:
    from forwardauth.devices.client import forget

    async def go() -> int:
        print(f"{_path(args)} deleted; {await forget(_path(args))}")
        return 0

    return _run(go())


def say(text: str) -> None:
    print(text, flush=True)


async def ask_stdin(prompt: str) -> str:
    """One line from stdin without blocking the poll loop's event loop. A
    daemon thread rather than the default executor, so Ctrl-C does not wait
    for Enter. End of input reads as "not now"."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = input(prompt)
        except EOFError:
            line = ""
        loop.call_soon_threadsafe(_settle, fut, line)

    threading.Thread(target=read, daemon=True).start()
    return await fut


def _settle(fut: asyncio.Future[str], line: str) -> None:
    if not fut.done():  # cancelled meanwhile (Ctrl-C)
        fut.set_result(line)


# --- forwardauth devices (administrators) ---------------------------------------------------

def register_admin(sub: SubCommands) -> None:
    p = sub.add_parser("devices", help="approving devices of any user: list, remove (administrators)")
    s = p.add_subparsers(dest="devices_command", required=True)
    ls = s.add_parser("list", help="a user's devices (never their credentials)")
    ls.add_argument("user", help="the user (a local account, or the subject of an upstream sign-in)")
    ls.add_argument("-c", "--config", required=True)
    ls.set_defaults(func=_cmd_list)
    rm = s.add_parser("remove", help="remove a device: its credential stops at once and its polls end with 401")
    rm.add_argument("device_id", help="the device's id (from `forwardauth devices list`)")
    rm.add_argument("-c", "--config", required=True)
    rm.set_defaults(func=_cmd_remove)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _cmd_list(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)

    async def go() -> int:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            found = await store.devices(args.user)
        finally:
            await store.close()
        if not found:
            print(f"{args.user}: no device")
        for d in found:
            print(f"{d.id}  {d.name}  added {_when(d.created)}  last seen {_when(d.last_seen)}")
        return 0

    return asyncio.run(with_store(cfg, go()))


def _cmd_remove(args: argparse.Namespace, env: CliEnv) -> int:
    cfg = env.config(args)

    async def go() -> int:
        store = open_store(resolve_state_url(cfg))
        await store.open()
        try:
            removed = await store.remove_device(args.device_id)
        finally:
            await store.close()
        if removed is None:
            raise CliError(f"no device {args.device_id}")
        env.audit(cfg).emit("device_removed", user=removed.user, reason=f"device {removed.id} by forwardauth "
                                                                        f"devices remove")
        print(f"removed {removed.id} ({removed.name}) of {removed.user}")
        return 0

    return asyncio.run(with_store(cfg, go()))
