"""Device approval across real processes: two `forwardauth serve` replicas on a
real Redis (the browser on one, the devices polling the other), and one server
with `--workers 2` on SQLite (connections spread over both workers by the
kernel). An approval request reaches a device waiting elsewhere within a
second; a device removed, or a user revoked, while it polls gets 401 at once."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from harness.devices import RD, Browser, Device, add_account, devices_server
from harness.forwardauth import cli
from harness.redis import RedisServer

USERS = [f"user{i}" for i in range(6)]  # six devices: some of them on the other worker, whatever the kernel picks


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture(scope="module", params=[pytest.param("replicas-redis", marks=pytest.mark.redis), "workers-sqlite"])
def servers(request, tmp_path_factory):
    """(where browsers go, where devices go, a config path for the CLI)."""
    if request.param == "replicas-redis":
        redis = request.getfixturevalue("redis_server")
        work = tmp_path_factory.mktemp("replicas")
        a = devices_server(work / "a", state=redis.url)
        keys = str(a.workdir / "keys.json")
        b = devices_server(work / "b", state=redis.url, keys={"file": keys})
        servers = [a, b]
    else:
        a = devices_server(tmp_path_factory.mktemp("workers"), server={"workers": 2})
        servers = [a]
    for name in USERS + ["revoked"]:
        add_account(servers[0], name)
    for s in servers:
        s.start()
    yield f"http://127.0.0.1:{servers[0].port}", f"http://127.0.0.1:{servers[-1].port}", servers[0]
    for s in servers:
        s.stop()


async def paired(servers, user: str) -> tuple[Device, str]:
    browser_url, device_url, fa = servers
    b = Browser(browser_url)
    b.signed_in(fa.issue(user, "mfa"))
    code = await b.new_pairing_code()
    await b.close()
    d = Device(device_url)
    device_id = await d.pair(code)
    assert (await d.poll()) == (200, [])
    return d, device_id


async def test_a_request_reaches_devices_polling_elsewhere_within_a_second(servers):
    devices = [(await paired(servers, u))[0] for u in USERS]
    polls = [asyncio.ensure_future(d.poll()) for d in devices]
    await asyncio.sleep(0.3)
    assert not any(p.done() for p in polls)
    took = []
    for user, device, poll in zip(USERS, devices, polls, strict=True):
        browser = Browser(servers[0])  # a fresh connection (and worker) each time
        t0 = time.monotonic()
        phrase = await browser.ask(username=user)
        status, requests = await asyncio.wait_for(poll, 5)
        took.append(time.monotonic() - t0)
        assert status == 200 and [r["host"] for r in requests] == ["app.test"] and phrase in requests[0]["phrases"]
        assert (await device.answer(requests[0]["id"], phrase)) == {"id": requests[0]["id"], "state": "approved",
                                                                     "reason": None}
        status, headers, _ = await browser.wait_outcome()
        assert (status, headers["Location"]) == (303, RD)
        assert "forwardauth=" in headers["Set-Cookie"]
        await browser.close()
    for d in devices:
        await d.close()
    assert max(took) < 1.0, took


async def test_a_device_removed_while_polling_gets_401(servers):
    device, device_id = await paired(servers, USERS[0])
    poll = asyncio.ensure_future(device.poll())
    await asyncio.sleep(0.3)
    out = cli("devices", "remove", device_id, "-c", str(servers[2].config))  # another process, the store only
    removed = time.monotonic()  # the write happened before the command returned
    assert out.startswith(f"removed {device_id} (phone) of {USERS[0]}")
    status, _ = await asyncio.wait_for(poll, 5)
    assert status == 401 and time.monotonic() - removed < 1.0, time.monotonic() - removed
    assert (await device.poll())[0] == 401
    await device.close()


async def test_a_revoked_user_s_waiting_poll_gets_401(servers):
    device, _ = await paired(servers, "revoked")
    poll = asyncio.ensure_future(device.poll())
    await asyncio.sleep(0.3)
    servers[2].revoke("revoked")  # `forwardauth session revoke`: the epoch moves past the device
    revoked = time.monotonic()
    status, _ = await asyncio.wait_for(poll, 5)
    # Within one revocation refresh (0.5 s here; at once with Redis pub/sub) of the write.
    assert status == 401 and time.monotonic() - revoked < 1.0, time.monotonic() - revoked
    await device.close()


async def test_devices_list_cli(servers):
    _, device_id = await paired(servers, USERS[1])
    out = cli("devices", "list", USERS[1], "-c", str(servers[2].config))
    assert re.search(rf"^{device_id}  phone  added \d{{4}}-\d\d-\d\dT[\d:]+Z  last seen", out, re.M), out
