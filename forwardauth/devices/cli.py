"""`forwardauth device pair|watch|forget`: this machine as an approving device.

Registration only; the client (and aiohttp) is imported when a command runs,
so `forwardauth check` and `explain` do not pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
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


def _cmd_pair(args: argparse.Namespace) -> int:
    from forwardauth.devices.client import pair

    async def go() -> int:
        saved = await pair(args.url, args.code, args.name or socket.gethostname()[:64] or "device", _path(args))
        print(f"paired as {saved.name!r} with {saved.url}; credential saved in {_path(args)}")
        return 0

    return _run(go())


def _cmd_watch(args: argparse.Namespace) -> int:
    from forwardauth.devices.client import Watcher, load

    async def go() -> int:
        saved = load(_path(args))
        print(f"watching {saved.url} as {saved.name!r} (Ctrl-C to stop)", flush=True)
        return await Watcher(saved, ask_stdin, say).run(once=args.once)

    return _run(go())


def _cmd_forget(args: argparse.Namespace) -> int:
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
