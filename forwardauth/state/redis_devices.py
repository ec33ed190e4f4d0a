"""The Redis store's devices, pairing codes and approval requests (see
`base.DeviceStore`), and its device change feed (pub/sub). Mixed into
`RedisStore`. Layout, under the store's `forwardauth:` prefix:

    dev:<id>          hash: the device (id, user, name, created, secret_hash, last_seen)
    devs:<user>       set of the user's device ids
    pair:<code hash>  a pairing (JSON), expiring with it (PX)
    req:<id>          hash: `fixed` (JSON of what never changes), user, expires,
                      state, reason, decided, device_id; kept until expiry + KEEP_DECIDED
    reqs:<user>       set of the user's PENDING request ids
    req:live:<user>   the id of the user's live request (SET NX PX until its
                      expiry): what makes "one live request per user" atomic
    device-changes    pub/sub channel: a user whose devices or requests changed

Every check-and-write is one Lua script (atomic on the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from forwardauth.state.base import KEEP_DECIDED
from forwardauth.state.records import ApprovalRequest, ApprovalState, Device, Pairing

log = logging.getLogger("forwardauth.state.redis")
P = "forwardauth:"
DEVICE_CHANNEL = P + "device-changes"
_RESOLVED = (ApprovalState.APPROVED, ApprovalState.DENIED, ApprovalState.CANCELLED)

_ADD_DEVICE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'user', ARGV[3], 'name', ARGV[4], 'created', ARGV[5],
           'secret_hash', ARGV[6])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""

_REMOVE_DEVICE = """
local user = redis.call('HGET', KEYS[1], 'user')
if not user then return false end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. user, ARGV[2])
redis.call('PUBLISH', KEYS[2], user)
return all
"""

_REMOVE_DEVICES = """
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1])
if #ids > 0 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return #ids
"""

_TOUCH_DEVICE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) end
return 1
"""

_CREATE_REQUEST = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'fixed', ARGV[4], 'user', ARGV[5], 'expires', ARGV[6], 'state', 'pending')
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('PEXPIREAT', KEYS[3], ARGV[3], 'GT') == 0 then redis.call('PEXPIREAT', KEYS[3], ARGV[3], 'NX') end
redis.call('PUBLISH', KEYS[4], ARGV[5])
return 1
"""

# KEYS: req:<id>, channel. ARGV: prefix, id, new state, reason, now, device id, mode
# mode "resolve": only a live request (pending, now < expires); publishes.
# mode "expire": only a pending request with now >= expires; publishes nothing.
_SETTLE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return false end
local user = redis.call('HGET', KEYS[1], 'user')
local live = tonumber(ARGV[5]) < tonumber(redis.call('HGET', KEYS[1], 'expires'))
if (ARGV[7] == 'resolve') ~= live then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'reason', ARGV[4], 'decided', ARGV[5], 'device_id', ARGV[6])
redis.call('SREM', ARGV[1] .. 'reqs:' .. user, ARGV[2])
local slot = ARGV[1] .. 'req:live:' .. user
if redis.call('GET', slot) == ARGV[2] then redis.call('DEL', slot) end
if ARGV[7] == 'resolve' then redis.call('PUBLISH', KEYS[2], user) end
return redis.call('HGETALL', KEYS[1])
"""


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _device(h: dict[str, str]) -> Device:
    last = h.get("last_seen")
    return Device(h["id"], h["user"], h["name"], float(h["created"]), h["secret_hash"],
                  float(last) if last else None)


def _request(h: dict[str, str]) -> ApprovalRequest:
    return ApprovalRequest.from_parts(h["fixed"], h["state"], h.get("reason"), h.get("decided") or None,
                                      h.get("device_id"))


class RedisDevices:
    # From RedisStore: its URL and timeout, the client (`r`), and the guard
    # turning Redis failures into StoreUnavailable.
    url: str
    timeout: float
    _guard: Callable[[], contextlib.AbstractAsyncContextManager[None]]
    _client: Callable[..., aioredis.Redis]  # a new client: plain Redis or the primary through Sentinel
    _replicated: Callable[[], Awaitable[None]]  # with Sentinel: wait until a replica has the write

    @property
    def r(self) -> aioredis.Redis:
        raise NotImplementedError  # RedisStore.r

    # --- change feed ------------------------------------------------------------------
    async def publish_change(self, user: str) -> None:
        async with self._guard():
            await self.r.publish(DEVICE_CHANNEL, user)

    async def subscribe_changes(self) -> AsyncIterator[str | None]:
        backoff = 0.2
        while True:
            client = self._client(health_check_interval=2)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(DEVICE_CHANNEL)
                backoff = 0.2
                yield None  # (re)connected: messages may have been missed
                while True:
                    msg = await pubsub.get_message(timeout=0.5)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # get_message may swallow a cancellation
                        raise asyncio.CancelledError
                    if msg is not None and msg.get("type") == "message":
                        yield str(msg["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("redis device pub/sub connection lost: %s", exc.__class__.__name__)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # --- devices ------------------------------------------------------------------------
    async def add_device(self, device: Device, max_devices: int) -> bool:
        async with self._guard():
            done = await self.r.eval(_ADD_DEVICE, 3, P + "devs:" + device.user, P + "dev:" + device.id,
                                     DEVICE_CHANNEL, str(max_devices), device.id, device.user, device.name,
                                     repr(device.created), device.secret_hash)
        return bool(done)

    async def device(self, device_id: str) -> Device | None:
        async with self._guard():
            h = cast(dict[str, str], await self.r.hgetall(P + "dev:" + device_id))
        return _device(h) if h else None

    async def devices(self, user: str) -> list[Device]:
        async with self._guard():
            ids = sorted(cast(set[str], await self.r.smembers(P + "devs:" + user)))
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(P + "dev:" + i)
                found = await p.execute()
        return sorted((_device(h) for h in found if h), key=lambda d: (d.created, d.id))

    async def remove_device(self, device_id: str) -> Device | None:
        async with self._guard():
            flat = await self.r.eval(_REMOVE_DEVICE, 2, P + "dev:" + device_id, DEVICE_CHANNEL, P + "devs:",
                                     device_id)
            if flat:
                await self._replicated()  # a removal stops a credential: like a revocation, on a replica first
        return _device(_pairs(flat)) if flat else None

    async def remove_devices(self, user: str) -> int:
        async with self._guard():
            n = int(await self.r.eval(_REMOVE_DEVICES, 2, P + "devs:" + user, DEVICE_CHANNEL, P + "dev:", user))
            if n:
                await self._replicated()
        return n

    async def touch_device(self, device_id: str, now: float) -> None:
        async with self._guard():
            await self.r.eval(_TOUCH_DEVICE, 1, P + "dev:" + device_id, repr(now))

    # --- pairing codes ---------------------------------------------------------------------
    async def put_pairing(self, code_hash: str, pairing: Pairing) -> None:
        ms = max(1, math.ceil((pairing.expires - pairing.created) * 1000))
        async with self._guard():
            await self.r.set(P + "pair:" + code_hash, json.dumps([pairing.user, pairing.created, pairing.expires]),
                             px=ms)

    async def pairing(self, code_hash: str, now: float) -> Pairing | None:
        async with self._guard():
            raw = await self.r.get(P + "pair:" + code_hash)
        if not raw:
            return None
        user, created, expires = json.loads(raw)
        return Pairing(user, float(created), float(expires)) if now < expires else None

    async def drop_pairing(self, code_hash: str) -> None:
        async with self._guard():
            await self.r.delete(P + "pair:" + code_hash)

    # --- approval requests -------------------------------------------------------------------
    async def create_request(self, request: ApprovalRequest, now: float) -> ApprovalRequest | None:
        live_ms = math.ceil((request.expires - now) * 1000)
        if live_ms <= 0:
            return None  # expired already: it could never be live
        keep_at = math.ceil((request.expires + KEEP_DECIDED) * 1000)
        async with self._guard():
            done = await self.r.eval(_CREATE_REQUEST, 4, P + "req:live:" + request.user, P + "req:" + request.id,
                                     P + "reqs:" + request.user, DEVICE_CHANNEL, request.id, str(live_ms),
                                     str(keep_at), request.fixed_json(), request.user, repr(request.expires))
        return request if done else None

    async def request(self, request_id: str) -> ApprovalRequest | None:
        async with self._guard():
            h = cast(dict[str, str], await self.r.hgetall(P + "req:" + request_id))
        return _request(h) if h else None

    async def pending(self, user: str, now: float) -> list[ApprovalRequest]:
        async with self._guard():
            ids = sorted(cast(set[str], await self.r.smembers(P + "reqs:" + user)))
            if not ids:
                return []
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(P + "req:" + i)
                found = await p.execute()
            gone = [i for i, h in zip(ids, found, strict=True) if not h]
            if gone:  # their hashes expired: tidy the set
                await self.r.srem(P + "reqs:" + user, *gone)
        out = [_request(h) for h in found if h and h.get("state") == "pending"]
        return sorted(out, key=lambda r: (r.created, r.id))

    async def _settle(self, request_id: str, state: ApprovalState, reason: str | None, now: float,
                      device_id: str | None, mode: str) -> ApprovalRequest | None:
        async with self._guard():
            flat = await self.r.eval(_SETTLE, 2, P + "req:" + request_id, DEVICE_CHANNEL, P, request_id, state.value,
                                     reason or "", repr(now), device_id or "", mode)
        return _request(_pairs(flat)) if flat else None

    async def resolve(self, request_id: str, state: ApprovalState, reason: str | None, now: float,
                      device_id: str | None = None) -> ApprovalRequest | None:
        if state not in _RESOLVED:
            raise ValueError(f"resolve() to {state.value}")
        return await self._settle(request_id, state, reason, now, device_id, "resolve")

    async def expire_request(self, request_id: str, now: float) -> ApprovalRequest | None:
        return await self._settle(request_id, ApprovalState.EXPIRED, None, now, None, "expire")
