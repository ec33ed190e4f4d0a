"""The device client (`forwardauth device pair|watch|forget`) against the devices
part's own API on a throwaway server (tests/harness/devices_stub.py) until the
part is wired into `forwardauth serve`: pairing and the credential file, the
watch loop reusing its connection and following the ETag, the phrase pick,
backoff while the server is down, Retry-After, and the burst guard."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from pathlib import Path

import pytest
from aiohttp import web

from forwardauth.devices import client as cl
from forwardauth.devices.settings import DevicesSettings, Limits
from forwardauth.state.records import ApprovalState
from harness.devices_stub import DeviceStub
from harness.procs import free_port


@pytest.fixture
async def stub():
    s = await DeviceStub(DevicesSettings(True, "mfa", poll_timeout=0.3,
                                         limits=Limits(requests_per_user=100, requests_per_client=100))).start()
    yield s
    await s.stop()


class Person:
    """Reads what the client shows and answers its question like a user would."""

    def __init__(self, pick: str | None = None) -> None:
        self.lines: list[str] = []
        self.pick = pick  # the phrase to pick, or "d" to deny
        self.asked = asyncio.Event()

    def say(self, text: str) -> None:
        self.lines.append(text)

    async def ask(self, prompt: str) -> str:
        self.asked.set()
        shown = dict(re.findall(r"^  (\d)\) (.+)$", self.lines[-1], re.M))
        if self.pick == "d":
            return "d"
        return next((n for n, p in shown.items() if p == self.pick), "")


async def paired(stub: DeviceStub, tmp_path: Path) -> cl.Saved:
    return await cl.pair(stub.url, await stub.pairing_code(), "laptop", tmp_path / "cfg" / "device.json")


def fast(saved: cl.Saved, person: Person) -> cl.Watcher:
    """Backoff from 0.1 s to 0.4 s instead of 1 s to 60 s, and a burst guard
    (tested on its own below) loose enough not to pace these tests."""
    return cl.Watcher(saved, person.ask, person.say, backoff=cl.Backoff(0.1, 0.4), burst=1000)


# --- pairing and the file ----------------------------------------------------------

async def test_pair_saves_a_file_only_its_owner_can_read(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    path = tmp_path / "cfg" / "device.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cl.load(path) == saved and saved.url == stub.url and saved.name == "laptop"
    device = await stub.svc.authenticate("Bearer " + saved.credential)
    assert device.user == "alice" and device.id == saved.device_id
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


async def test_pair_with_the_pairing_url(stub, tmp_path):
    code = await stub.pairing_code("bob")
    saved = await cl.pair(f"{stub.url}/oauth2/devices/phone#code={code}", None, "x", tmp_path / "d.json")
    assert (await stub.svc.authenticate("Bearer " + saved.credential)).user == "bob"


async def test_a_used_code_is_refused_with_the_servers_message(stub, tmp_path):
    code = await stub.pairing_code()
    await cl.pair(stub.url, code, "one", tmp_path / "a.json")
    with pytest.raises(cl.ClientError, match="^pairing refused: the pairing code is not valid: wrong, expired or "
                                             "used already$"):
        await cl.pair(stub.url, code, "two", tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("url, code, message", [
    ("http://auth.example.com", "ABCD-EFGH-JKLM-NPQR", "use https: the device credential would travel in clear over "
                                                      "http"),
    ("ftp://x", "ABCD-EFGH-JKLM-NPQR", "not a server URL: 'ftp://x' (e.g. https://auth.example.com)"),
    ("https://auth.example.com", None, "no pairing code: give CODE, or the pairing URL the devices page shows"),
    ("https://auth.example.com", "1234", "that is not a pairing code (16 letters and digits, e.g. "
                                         "ABCD-EFGH-JKLM-NPQR)"),
])
async def test_bad_pair_input(tmp_path, url, code, message):
    with pytest.raises(cl.ClientError) as info:
        await cl.pair(url, code, "x", tmp_path / "d.json")
    assert str(info.value) == message


async def test_pair_with_the_server_down(tmp_path):
    port = free_port()
    with pytest.raises(cl.ClientError, match=f"^cannot reach http://127.0.0.1:{port}: ClientConnectorError$"):
        await cl.pair(f"http://127.0.0.1:{port}", "ABCD-EFGH-JKLM-NPQR", "x", tmp_path / "d.json")


async def test_a_file_others_can_read_is_refused(stub, tmp_path):
    await paired(stub, tmp_path)
    path = tmp_path / "cfg" / "device.json"
    os.chmod(path, 0o640)
    with pytest.raises(cl.ClientError) as info:
        cl.load(path)
    assert str(info.value) == f"{path}: must be readable by its owner only (chmod 600 {path})"
    with pytest.raises(cl.ClientError) as info:
        cl.load(tmp_path / "none.json")
    assert str(info.value) == (f"{tmp_path / 'none.json'}: no device credential here "
                               f"(pair first: forwardauth device pair URL CODE)")


# --- watching ---------------------------------------------------------------------------

async def test_watch_once_picks_the_browsers_phrase_and_approves_over_one_connection(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    await stub.stop()
    stub.record_peers = True
    await stub.start()
    person = Person()
    watch = asyncio.ensure_future(fast(saved, person).run(once=True))
    await asyncio.sleep(1.0)  # poll_timeout 0.3 s: a few 304s go by
    req = await stub.ask()
    person.pick = req.phrase
    assert await asyncio.wait_for(watch, 5) == 0
    assert (await stub.store.request(req.id)).state is ApprovalState.APPROVED
    shown = person.lines[-2]
    assert "app.example.com/admin (level mfa)" in shown and "203.0.113.5, Firefox/130" in shown
    assert all(p in shown for p in req.choices) and person.lines[-1] == "approved"
    assert len(stub.peers) >= 4 and len(set(stub.peers)) == 1  # every poll and the answer on one connection


async def test_watch_wrong_pick_is_denied(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    req = await stub.ask()
    person = Person(next(c for c in req.choices if c != req.phrase))
    assert await asyncio.wait_for(fast(saved, person).run(once=True), 5) == 1
    r = await stub.store.request(req.id)
    assert (r.state, r.reason) == (ApprovalState.DENIED, "wrong_phrase")
    assert person.lines[-1].startswith("denied: that is not the phrase the browser showed.")
    assert "approval_wrong_phrase" in stub.audit.events


async def test_watch_deny(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    req = await stub.ask()
    assert await asyncio.wait_for(fast(saved, Person("d")).run(once=True), 5) == 1
    assert (await stub.store.request(req.id)).reason == "denied_on_device"


async def test_watch_stops_when_the_device_is_removed(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    person = Person()
    watch = asyncio.ensure_future(fast(saved, person).run())
    await asyncio.sleep(0.2)
    await stub.svc.remove_device(saved.device_id, None, by="admin")
    assert await asyncio.wait_for(watch, 2) == 2
    assert person.lines[-1].startswith("this device's credential is no longer accepted")


async def test_server_down_then_back_up_reconnects_with_backoff_and_picks_up_the_request(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    person = Person()
    watcher = fast(saved, person)
    watch = asyncio.ensure_future(watcher.run(once=True))
    await asyncio.sleep(0.5)
    await stub.stop()
    before = watcher.polls
    await asyncio.sleep(2.0)
    tries = watcher.polls - before
    # Backoff 0.1 s doubling to 0.4 s (each wait half to all of it): at most
    # about 8 tries in 2 s. Without backoff it would be thousands.
    assert 2 <= tries <= 10, tries
    assert watcher.errors >= 2 and "unreachable (ClientConnectorError); trying again" in person.lines[-1]
    await stub.start()
    req = await stub.ask()
    person.pick = req.phrase
    assert await asyncio.wait_for(watch, 5) == 0
    assert (await stub.store.request(req.id)).state is ApprovalState.APPROVED


async def fake_server(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/api/v1/device/requests", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_retry_after_is_honoured():
    hits: list[float] = []

    async def handler(request):
        hits.append(time.monotonic())
        if len(hits) == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=401)

    runner, url = await fake_server(handler)
    person = Person()
    try:
        code = await cl.Watcher(cl.Saved(url, "d", "n", "fad1_x"), person.ask, person.say,
                                backoff=cl.Backoff(0.05, 0.1)).run()
    finally:
        await runner.cleanup()
    assert code == 2 and len(hits) == 2 and hits[1] - hits[0] >= 0.95
    assert person.lines[0] == "server answered HTTP 503; trying again in 1s"


async def test_a_server_answering_at_once_forever_is_not_hammered():
    hits: list[float] = []

    async def handler(request):
        hits.append(time.monotonic())
        return web.Response(status=304, headers={"ETag": '"same"'})

    runner, url = await fake_server(handler)
    watcher = cl.Watcher(cl.Saved(url, "d", "n", "fad1_x"), Person().ask, Person().say, burst=5, burst_period=1.0)
    task = asyncio.ensure_future(watcher.run())
    await asyncio.sleep(1.5)
    task.cancel()
    await runner.cleanup()
    assert 5 <= len(hits) <= 10, len(hits)


async def test_forget_removes_the_device_on_the_server_and_the_file(stub, tmp_path):
    saved = await paired(stub, tmp_path)
    path = tmp_path / "cfg" / "device.json"
    assert await cl.forget(path) == "removed on the server"
    assert not path.exists() and await stub.store.device(saved.device_id) is None
    assert stub.audit.events[-1] == "device_removed"


async def test_forget_with_the_server_down_still_deletes_the_file(stub, tmp_path):
    await paired(stub, tmp_path)
    await stub.stop()
    path = tmp_path / "cfg" / "device.json"
    assert await cl.forget(path) == f"{stub.url} unreachable: remove the device on its devices page"
    assert not path.exists()


# --- pieces -----------------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_is_capped():
    import random

    b = cl.Backoff(1, 60, random.Random(1))
    waits = [b.next() for _ in range(10)]
    for n, w in enumerate(waits):
        d = min(60, 2 ** n)
        assert d / 2 <= w <= d
    assert b.next(at_least=120) == 120
    b.reset()
    assert 0.5 <= b.next() <= 1


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("", None), ("30", 30.0), ("999999", 3600.0), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("Wed, 21 Oct 2015 07:29:00 GMT", 60.0),
    ("\u00b2", None), ("\u0661\u0662", None),  # digits to str.isdigit, not to RFC 9110 (found by fuzzing: ValueError)
    ("Wed, 222222222222222222222222222222222222221 Oct 2015 07:00  GMT", None),  # bench/fuzz.py: OverflowError
])
def test_retry_after(value, seconds):
    assert cl.retry_after(value, 1445412480.0) == seconds


@pytest.mark.parametrize("body, shown", [
    (b"x" * (cl.MAX_ANSWER + 1), "the server's answer was refused (answer over 256 KB)"),
    (b'{"requests": [], "requests": [{"id": "r1"}]}', "the server's answer was refused (a key appears twice in one object)"),
    (b"[1, 2]", "the server's answer was refused (not a list of requests)"),
    (b'{"requests": {"id": "r1"}}', "the server's answer was refused (not a list of requests)"),
    (b"<html>", "the server's answer was refused (not valid JSON)"),
])
async def test_an_answer_that_is_not_one_is_refused_and_backed_off(body, shown):
    """A 200 from the server (or a proxy before it) that is too large, reads two ways or has the
    wrong shape: refused with the reason, backed off like an error, never a crash or a read without end."""
    hits: list[float] = []

    async def handler(request):
        hits.append(time.monotonic())
        if len(hits) == 1:
            return web.Response(body=body, content_type="application/json")
        return web.Response(status=401)

    runner, url = await fake_server(handler)
    person = Person()
    try:
        code = await cl.Watcher(cl.Saved(url, "d", "n", "fad1_x"), person.ask, person.say,
                                backoff=cl.Backoff(0.05, 0.1)).run()
    finally:
        await runner.cleanup()
    assert code == 2 and len(hits) == 2
    assert person.lines[0] == f"{shown}; trying again"


async def test_a_pairing_answer_that_is_not_one_is_refused(tmp_path):
    app = web.Application()

    async def pair_handler(request):
        # Reads two ways (a plain JSON parser keeps the last credential): refused, nothing saved.
        return web.Response(body=b'{"device": {"id": "d1", "name": "laptop"}, "credential": "fad1_a", '
                                 b'"credential": "fad1_b"}', content_type="application/json", status=201)

    app.router.add_post("/api/v1/device/pair", pair_handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(cl.ClientError) as e:
            await cl.pair(f"http://127.0.0.1:{port}", "ABCD-EFGH-JKLM-NPQR", "laptop", tmp_path / "device.json")
    finally:
        await runner.cleanup()
    assert str(e.value) == "the server's answer is not a pairing"
    assert not (tmp_path / "device.json").exists()
