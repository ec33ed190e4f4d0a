"""`forwardauth device pair|watch|forget` as a person runs them, against a real
`forwardauth serve` that goes down while the watcher waits and comes back:
the watcher backs off (a handful of tries, not a tight loop), reconnects by
itself, shows the request's three phrases, and the phrase typed on its stdin
approves the browser's sign-in."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
import time

import pytest

from harness.devices import RD, Browser, add_account, devices_server
from harness.forwardauth import cli


@pytest.fixture
def server(tmp_path):
    fa = devices_server(tmp_path / "server")
    add_account(fa, "alice")
    with fa:
        yield fa


async def run(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "forwardauth", *args, stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_pair_watch_through_an_outage_and_forget(server, tmp_path):
    base = f"http://127.0.0.1:{server.port}"
    browser = Browser(base)
    browser.signed_in(server.issue("alice", "mfa"))
    code = await browser.new_pairing_code()
    cred = tmp_path / "home" / "device.json"
    p = await run("device", "pair", base, code, "--name", "laptop", "--file", str(cred))
    out = (await p.communicate())[0].decode()
    assert p.returncode == 0 and out == f"paired as 'laptop' with {base}; credential saved in {cred}\n"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600

    watch = await run("device", "watch", "--once", "--file", str(cred), stdin=True)
    assert watch.stdout is not None and watch.stdin is not None
    assert (await watch.stdout.readline()).decode() == f"watching {base} as 'laptop' (Ctrl-C to stop)\n"
    await asyncio.sleep(1.0)  # it waits on its long-poll
    server.stop()
    down = time.monotonic()
    lines: list[str] = []

    async def read_until(pattern: str, timeout: float) -> re.Match[str]:
        end = time.monotonic() + timeout
        while True:
            for line in lines:
                if m := re.search(pattern, line):
                    return m
            raw = await asyncio.wait_for(watch.stdout.readline(), max(0.1, end - time.monotonic()))
            lines.append(raw.decode())

    await read_until(r"unreachable \((ClientConnectorError|ServerDisconnectedError|ClientOSError)\); trying again",
                     10)
    await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - down)))  # down for about 4 s
    server.start()
    phrase = await browser.ask(username="alice")
    await read_until(r"^  3\) ", 30)  # reconnected by itself and shows the request
    shown = dict(re.findall(r"^  (\d)\) (.+)$", "".join(lines), re.M))
    tries = sum("trying again" in line for line in lines)
    assert 1 <= tries <= 4, lines  # 1 s doubling with jitter: a few tries while down, never a tight loop
    assert phrase in shown.values() and len(shown) == 3
    assert any("Sign-in waiting for approval: app.test/mfa/page (level mfa)" in line for line in lines)
    pick = next(n for n, p in shown.items() if p == phrase)
    watch.stdin.write(f"{pick}\n".encode())
    await watch.stdin.drain()
    rest = (await asyncio.wait_for(watch.stdout.read(), 10)).decode()
    assert await watch.wait() == 0 and rest.rstrip().endswith("approved")
    status, headers, _ = await browser.wait_outcome()
    assert (status, headers["Location"]) == (303, RD)

    p = await run("device", "forget", "--file", str(cred))
    out = (await p.communicate())[0].decode()
    assert p.returncode == 0 and out == f"{cred} deleted; removed on the server\n" and not cred.exists()
    assert "no device" in cli("devices", "list", "alice", "-c", str(server.config))
    await browser.close()


async def test_watch_refuses_a_credential_file_others_can_read(tmp_path):
    cred = tmp_path / "device.json"
    cred.write_text('{"url": "http://127.0.0.1:1", "device_id": "x", "name": "n", "credential": "fad1_x"}\n')
    os.chmod(cred, 0o644)
    p = await run("device", "watch", "--file", str(cred))
    out = (await p.communicate())[0].decode()
    assert p.returncode == 2 and out == f"forwardauth: {cred}: must be readable by its owner only (chmod 600 {cred})\n"
