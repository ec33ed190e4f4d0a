"""The device approval service over the in-memory store: pairing once, the
credential, one pending request per user, rate limits, number matching with
wrong picks denied, audited and regulated, expiry, cancel, removal ending a
poll with 401. Every refusal's exact status, code and message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from forwardauth.devices import credentials
from forwardauth.devices.hub import Busy, Hub
from forwardauth.devices.service import DeviceService, Refusal
from forwardauth.devices.settings import DevicesSettings, Limits
from forwardauth.services.regulation import RegulationConfig, Regulator
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import ApprovalState

T = 1_700_000_000.0
SETTINGS = DevicesSettings(True, "mfa", max_devices=2, request_ttl=120, pairing_ttl=600, poll_timeout=5,
                           limits=Limits(polls_per_user=3, requests_per_user=4, requests_per_client=6, window=600))


class Conn:
    connected = True


CONN = Conn()


class Audit:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    @property
    def events(self) -> list[str]:
        return [e for e, _ in self.lines]


class Clock:
    def __init__(self, now: float = T) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(clock) -> DeviceService:
    store = MemoryStore()
    reg = Regulator(store, RegulationConfig(max_failures=3, max_client_failures=50, window=600, ban_time=900))
    return DeviceService(SETTINGS, store, Hub(polls_per_user=3), reg, Audit(), clock=clock)


async def refused(coro) -> tuple[int, str, str, float | None]:
    with pytest.raises(Refusal) as info:
        await coro
    e = info.value
    return e.status, e.error, e.message, e.retry_after


async def paired(svc: DeviceService, user: str = "alice", name: str = "phone"):
    code, _ = await svc.new_pairing_code(user)
    return await svc.pair({"code": credentials.format_code(code).lower(), "name": name}, "192.0.2.9")


# --- pairing ---------------------------------------------------------------------

async def test_a_pairing_code_pairs_once(svc):
    code, pairing = await svc.new_pairing_code("alice")
    assert (pairing.user, pairing.expires - pairing.created) == ("alice", 600)
    device, token = await svc.pair({"code": code, "name": " my phone "}, "192.0.2.9")
    assert (device.user, device.name) == ("alice", "my phone")
    assert (await svc.authenticate("Bearer " + token)).id == device.id
    assert await refused(svc.pair({"code": code, "name": "again"}, "192.0.2.9")) == (
        403, "invalid_code", "the pairing code is not valid: wrong, expired or used already", None)
    assert svc.audit.events == ["device_paired", "device_pair_failed"]
    assert code not in repr(svc.audit.lines) and token not in repr(svc.audit.lines)


async def test_two_devices_racing_for_one_code_pair_one(svc):
    code, _ = await svc.new_pairing_code("alice")
    results = await asyncio.gather(*(svc.pair({"code": code, "name": f"d{i}"}, None) for i in range(5)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert len(await svc.devices("alice")) == 1


async def test_an_expired_code_does_not_pair(svc, clock):
    code, _ = await svc.new_pairing_code("alice")
    clock.now += 600
    assert (await refused(svc.pair({"code": code, "name": "x"}, None)))[:2] == (403, "invalid_code")


async def test_wrong_codes_are_limited_per_address(svc, clock):
    for _ in range(6):
        assert (await refused(svc.pair({"code": "AAAA-AAAA-AAAA-AAAA", "name": "x"}, "192.0.2.9")))[0] == 403
    clock.now += 10
    assert await refused(svc.pair({"code": "AAAA-AAAA-AAAA-AAAA", "name": "x"}, "192.0.2.9")) == (
        429, "too_many_attempts", "too many wrong pairing codes from this address", 590.0)
    code, _ = await svc.new_pairing_code("alice")  # even a right code, from there
    assert (await refused(svc.pair({"code": code, "name": "x"}, "192.0.2.9")))[0] == 429
    assert (await svc.pair({"code": code, "name": "x"}, "198.51.100.1"))[0].user == "alice"


async def test_max_devices(svc):
    await paired(svc)
    code, _ = await svc.new_pairing_code("alice")
    await paired(svc)
    tooth = (409, "too_many_devices", "this account has 2 devices already: remove one first", None)
    assert await refused(svc.new_pairing_code("alice")) == tooth
    assert await refused(svc.pair({"code": code, "name": "third"}, None)) == tooth  # a code from before


async def test_bad_pairing_body_is_400(svc):
    assert await refused(svc.pair({"code": "x"}, None)) == (
        400, "invalid_request", "name: must be 1 to 64 printable characters", None)


# --- the credential --------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc"])
async def test_no_credential_is_401(svc, header):
    assert await refused(svc.authenticate(header)) == (
        401, "invalid_token", "the device credential is not valid (removed, or never paired)", None)


async def test_wrong_secret_removed_device_and_revoked_user_are_401(svc, clock):
    device, token = await paired(svc)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await refused(svc.authenticate("Bearer " + forged)))[0] == 401
    svc.valid = lambda d, now: d.created > now  # e.g. the user's epoch moved past the device
    assert (await refused(svc.authenticate("Bearer " + token)))[0] == 401
    svc.valid = lambda d, now: True
    await svc.remove_device(device.id, "alice", by="alice")
    assert (await refused(svc.authenticate("Bearer " + token)))[0] == 401
    assert svc.audit.events[-1] == "device_removed"


async def test_last_seen_is_written_at_most_once_a_minute(svc, clock):
    device, token = await paired(svc)
    await svc.authenticate("Bearer " + token)
    assert (await svc.store.device(device.id)).last_seen == T
    clock.now += 30
    await svc.authenticate("Bearer " + token)
    assert (await svc.store.device(device.id)).last_seen == T
    clock.now += 31
    await svc.authenticate("Bearer " + token)
    assert (await svc.store.device(device.id)).last_seen == T + 61


async def test_removing_someone_elses_device_is_not_found(svc):
    device, _ = await paired(svc)
    assert await refused(svc.remove_device(device.id, "bob", by="bob")) == (404, "not_found", "no such device", None)
    assert (await svc.remove_device(device.id, None, by="admin")).id == device.id


# --- requests and answers ------------------------------------------------------------

async def ask(svc, user="alice", client="203.0.113.5"):
    return await svc.request_approval(user, "app.example.com", "/admin?x=1", client, "Firefox")


async def test_right_phrase_approves(svc):
    device, _ = await paired(svc)
    r = await ask(svc)
    done = await svc.answer(device, r.id, {"decision": "approve", "phrase": r.phrase})
    assert (done.state, done.reason, done.device_id) == (ApprovalState.APPROVED, None, device.id)
    assert (await svc.outcome(r.id)).state is ApprovalState.APPROVED
    event, fields = svc.audit.lines[-1]
    assert event == "approval_approved" and fields == {"user": "alice", "client": "203.0.113.5",
                                                       "host": "app.example.com", "path": "/admin", "level": "mfa",
                                                       "reason": f"device {device.id}"}


async def test_wrong_phrase_denies_is_audited_and_regulated(svc):
    device, _ = await paired(svc)
    for _ in range(3):
        r = await ask(svc)
        wrong = next(c for c in r.choices if c != r.phrase)
        done = await svc.answer(device, r.id, {"decision": "approve", "phrase": wrong})
        assert (done.state, done.reason) == (ApprovalState.DENIED, "wrong_phrase")
        assert svc.audit.events[-1] == "approval_wrong_phrase"
    # three wrong picks (max_failures) ban the username: no more requests for it
    status, error, message, retry = await refused(ask(svc))
    assert (status, error, message, retry) == (429, "banned", "too many failed attempts: try again later", 900)
    assert (await svc.regulator.check("alice", "203.0.113.5", T)).banned


async def test_deny_on_the_device(svc):
    device, _ = await paired(svc)
    r = await ask(svc)
    done = await svc.answer(device, r.id, {"decision": "deny"})
    assert (done.state, done.reason) == (ApprovalState.DENIED, "denied_on_device")
    assert svc.audit.events[-1] == "approval_denied"
    assert not (await svc.regulator.check("alice", "203.0.113.5", T)).banned


async def test_no_phrase_or_credential_ever_reaches_the_audit_log(svc):
    device, token = await paired(svc)
    seen = []
    for decision in ("approve", "deny", "wrong"):
        r = await ask(svc)
        seen += list(r.choices)
        body = {"decision": "deny"} if decision == "deny" else {
            "decision": "approve", "phrase": r.phrase if decision == "approve" else r.choices[r.choices.index(
                r.phrase) - 1]}
        await svc.answer(device, r.id, body)
    text = repr(svc.audit.lines)
    assert not any(p in text for p in seen) and token not in text


async def test_one_pending_request_per_user(svc, clock):
    device, _ = await paired(svc)
    r = await ask(svc)
    assert await refused(ask(svc, client="198.51.100.2")) == (
        409, "pending", "an approval request for this account is waiting already: answer or deny it on the "
                        "device, or wait until it expires", None)
    await ask(svc, user="bob")  # other users are not held up
    await svc.answer(device, r.id, {"decision": "deny"})
    r2 = await ask(svc)
    clock.now += 120  # r2 expires: the slot is free again
    r3 = await ask(svc)
    assert r3.id not in (r.id, r2.id)


async def test_rate_limits_per_user_and_per_client(svc, clock):
    device, _ = await paired(svc)
    for _ in range(4):
        r = await ask(svc)
        await svc.cancel(r.id)
    assert await refused(ask(svc)) == (429, "too_many_requests",
                                       "too many approval requests for this account: try again later", 600)
    for user in ("u1", "u2"):  # 6 per client: alice's 5 (the refused one counts) and these
        await ask(svc, user=user, client="203.0.113.5")
    assert await refused(ask(svc, user="u3", client="203.0.113.5")) == (
        429, "too_many_requests", "too many approval requests from this address: try again later", 600)
    await ask(svc, user="u3", client="198.51.100.3")
    clock.now += 601
    await ask(svc)


async def test_answers_that_do_not_apply(svc, clock):
    device, _ = await paired(svc)
    bob_device, _ = await paired(svc, user="bob")
    r = await ask(svc)
    nf = (404, "not_found", "no such request", None)
    assert await refused(svc.answer(bob_device, r.id, {"decision": "deny"})) == nf
    assert await refused(svc.answer(device, "x" * 22, {"decision": "deny"})) == nf
    assert await refused(svc.answer(device, "../etc", {"decision": "deny"})) == nf
    assert await refused(svc.answer(device, r.id, {"decision": "approve"})) == (
        400, "invalid_request", "phrase: required to approve (the phrase the browser shows)", None)
    await svc.answer(device, r.id, {"decision": "approve", "phrase": r.phrase})
    assert await refused(svc.answer(device, r.id, {"decision": "deny"})) == (
        409, "not_pending", "the request is approved already", None)


async def test_expiry_is_audited_once_and_said_plainly(svc, clock):
    device, _ = await paired(svc)
    r = await ask(svc)
    clock.now += 121
    assert await refused(svc.answer(device, r.id, {"decision": "approve", "phrase": r.phrase})) == (
        409, "not_pending", "the request is expired already", None)
    assert (await svc.outcome(r.id)).state is ApprovalState.EXPIRED
    await svc.snapshot(device.id, "alice")
    assert svc.audit.events.count("approval_expired") == 1


async def test_cancel_by_the_browser(svc):
    device, _ = await paired(svc)
    r = await ask(svc)
    assert (await svc.cancel(r.id)).state is ApprovalState.CANCELLED
    assert await svc.cancel(r.id) is None
    assert svc.audit.events[-1] == "approval_cancelled"
    assert (await refused(svc.answer(device, r.id, {"decision": "deny"})))[2] == "the request is cancelled already"


async def test_outcome_of_unknown_request(svc):
    assert await svc.outcome("nope") is None
    assert await svc.outcome("A" * 22) is None


# --- polls through the service ---------------------------------------------------------

async def test_poll_sees_a_new_request_and_removal_ends_it_with_401():
    svc = DeviceService(SETTINGS, MemoryStore(), Hub(), Regulator(MemoryStore(), RegulationConfig()),
                        Audit())
    device, _ = await paired(svc)
    first = await svc.poll(device, None, CONN)
    assert (first.status, first.requests) == (200, ())
    waiting = asyncio.ensure_future(svc.poll(device, first.etag, CONN))
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    r = await ask(svc)
    reply = await asyncio.wait_for(waiting, 1)
    assert reply.status == 200 and [x.id for x in reply.requests] == [r.id] and time.perf_counter() - t0 < 0.05
    waiting = asyncio.ensure_future(svc.poll(device, reply.etag, CONN))
    await asyncio.sleep(0.01)
    await svc.remove_device(device.id, None, by="admin")
    assert (await asyncio.wait_for(waiting, 1)).status == 401


async def test_too_many_polls_is_429():
    svc = DeviceService(SETTINGS, MemoryStore(), Hub(polls_per_user=1), Regulator(MemoryStore(),
                        RegulationConfig()), Audit())
    d1, _ = await paired(svc)
    d2, _ = await paired(svc)
    first = await svc.poll(d1, None, CONN)
    waiting = asyncio.ensure_future(svc.poll(d1, first.etag, CONN))
    await asyncio.sleep(0.01)
    with pytest.raises(Busy):
        await svc.poll(d2, first.etag, CONN)
    b = svc.busy()
    assert (b.status, b.error, b.message, b.retry_after) == (
        429, "too_many_polls", "too many polls waiting for this account", 5.0)
    waiting.cancel()
