"""Redis state: what many replicas share (redis-py's asyncio client).

Layout (every key under the `forwardauth:` prefix):

    rev:version     INCR on every revocation write (the cheap poll)
    epochs          hash user -> epoch (only ever raised, by a Lua script)
    revoked         sorted set ident -> until (ZADD GT: only ever extended)
    tok:version     INCR when tokens are issued or revoked, and on account writes
    tokens          hash token id -> record (JSON); tok:used / tok:revoked hashes
    dbcreds         hash account -> sealed credentials (JSON)
    acct:<name>     account record (JSON); `accounts` set of names
    fail:<key>      sorted set of failure times (regulation; EXPIRE window + 60,
                    so the keys of names that never come back go by themselves)
    once:<key>      a single-use claim (SET NX PX: Redis expires it)
    wa:cred:<id>, wa:user:<user>   WebAuthn credentials (see redis_webauthn.py)
    events          pub/sub channel: "rev" / "tok" after each change (account
                    writes send "tok": a lock or a group change reaches every
                    replica's token index in milliseconds)
    dev:, devs:, pair:, req:, reqs:, req:live:, device-changes
                    approving devices, pairing codes, approval requests and
                    their change feed: see redis_devices.py (epoch writes
                    publish the user on device-changes too)

    marker          JSON {id, created, new_until, lost_at}: who this store is
                    (see "Continuity" below)

Replicas subscribe to `events` and refresh at once, so a revocation through
one replica is in force on the others in milliseconds; the periodic refresh
still runs and covers a missed message. Every key starts empty (a missing
version counter reads 0). Every Redis failure becomes `StoreUnavailable` with
the exception's class only: the URL (which may hold a password) is never in
a message.

Continuity: Redis without persistence forgets everything when it restarts.
A serving process reads the `marker` key with every poll of the revocation
version; a marker that is gone, or another one, means the data is gone
(`losses`): the process writes back what it remembers (see
forwardauth.state.revocations) and the marker records the loss (`lost_at`), which
every process reports on /readyz until `forwardauth state ack`. A serving
process that opens a store without a marker cannot tell a new store from
an emptied one, so it writes a marker that says "new until T" (`settle`
seconds: longer than the running replicas take to notice and write back)
and answers signed-in requests only after T (or once a running replica has
written back, or after `forwardauth state ack`).

`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]` finds
the primary through Redis Sentinel (redis-py's Sentinel client: after a
failover the next command goes to the new primary); the password is the
data nodes', the sentinels are asked without one. There, each revocation
write waits (WAIT, at most 0.5 s) until a replica has it, so a failover
right after it does not lose it; a write no replica confirmed is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from forwardauth.state.base import SWEEP_GRACE, StateStore, StoreUnavailable, lost_message
from forwardauth.state.records import Account, RevocationSnapshot, SealedCreds, TokenMeta
from forwardauth.state.redis_devices import DEVICE_CHANNEL, RedisDevices
from forwardauth.state.redis_webauthn import RedisWebAuthn

log = logging.getLogger("forwardauth.state.redis")
P = "forwardauth:"
CHANNEL = P + "events"
MARKER = P + "marker"
SENTINEL_SCHEME = "redis+sentinel://"
REPLICA_WAIT_MS = 500

# After a loss: record it in the marker (made anew if it is gone), keep its id otherwise.
_MARK_LOST = """
local raw = redis.call('GET', KEYS[1])
local m
if raw then m = cjson.decode(raw) else m = {id = ARGV[1], created = tonumber(ARGV[2])} end
if m['lost_at'] == nil or m['lost_at'] == cjson.null then m['lost_at'] = tonumber(ARGV[2]) end
m['new_until'] = cjson.null
local out = cjson.encode(m)
redis.call('SET', KEYS[1], out)
return out
"""

_SET_EPOCH = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], 'rev')
redis.call('PUBLISH', KEYS[4], ARGV[1])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

_TOUCH = """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, str | None, int]:
    """(sentinels, service name, password, db) of a redis+sentinel:// URL; ValueError when malformed."""
    rest = url[len(SENTINEL_SCHEME):]
    auth, at, hosts_path = rest.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if at else None
    hosts, _, path = hosts_path.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2:
        raise ValueError("redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]")
    sentinels = []
    for h in hosts.split(","):
        host, colon, port = h.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError("each sentinel is HOST:PORT")
        sentinels.append((host.strip("[]"), int(port)))
    db = int(parts[1]) if len(parts) == 2 else 0
    return sentinels, unquote(parts[0]), password, db


class RedisStore(RedisWebAuthn, RedisDevices, StateStore):
    def __init__(self, url: str, timeout: float = 1.0, settle: float | None = None):
        """`settle`: a serving process (see "Continuity"); None for commands, which never write a marker."""
        self.url = url
        self.timeout = timeout
        self.settle = settle
        self.sentinel = url.startswith(SENTINEL_SCHEME)
        self._r: aioredis.Redis | None = None
        self._subscribers: list[Callable[[], None]] = []
        self._listener: asyncio.Task | None = None
        self._closing = False
        self._marker_id: str | None = None  # the marker this process knows (None: none seen yet)
        self._marker: dict[str, Any] | None = None  # as last read
        self._unreplicated_reported = False
        self.losses = 0

    # --- plumbing ------------------------------------------------------------

    def _client(self, **kw: Any) -> aioredis.Redis:
        try:
            if not self.sentinel:
                return aioredis.Redis.from_url(self.url, socket_connect_timeout=self.timeout,
                                               decode_responses=True, **kw)
            from redis.asyncio.sentinel import Sentinel

            sentinels, service, password, db = parse_sentinel_url(self.url)
            manager = Sentinel(sentinels, sentinel_kwargs={"socket_timeout": self.timeout,
                                                           "socket_connect_timeout": self.timeout})
            return manager.master_for(service, socket_connect_timeout=self.timeout, password=password, db=db,
                                      decode_responses=True, **kw)
        except ValueError:
            raise StoreUnavailable("redis: the state URL is malformed") from None

    @property
    def r(self) -> aioredis.Redis:
        if self._r is None:
            self._r = self._client(socket_timeout=self.timeout)
        return self._r

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable ({exc.__class__.__name__})") from None

    async def open(self) -> None:
        async with self._guard():
            await self.r.ping()
            raw = await self.r.get(MARKER)
            if raw is None and self.settle is not None:
                now = time.time()
                mark = {"id": uuid.uuid4().hex, "created": now, "new_until": now + self.settle, "lost_at": None}
                if await self.r.set(MARKER, json.dumps(mark), nx=True):
                    log.warning("redis state: no marker found: a new store, or one that lost its data while no "
                                "forwardauth process was running; signed-in requests wait %.0f s for running "
                                "replicas to write back what they remember (`forwardauth state ack` ends the "
                                "wait)", self.settle)
                raw = await self.r.get(MARKER)
            self._seen(raw)

    # --- continuity (see the module's docstring) -------------------------------------

    def _seen(self, raw: str | bytes | None) -> None:
        """The marker as just read: a missing or different one is a loss."""
        try:
            m = json.loads(raw) if raw else None
            if m is not None and not isinstance(m.get("id"), str):
                m = None
        except ValueError:
            m = None
        if self._marker_id is not None and (m is None or m["id"] != self._marker_id):
            self.losses += 1
            self._marker_id = None  # the snapshots write back, then restored() records the loss
            log.error("redis state: its marker is %s: Redis lost its data (restarted without persistence, "
                      "flushed, or another one); writing back what this process remembers",
                      "gone" if m is None else "another one")
        elif m is not None:
            self._marker_id = m["id"]
        self._marker = m

    def untrusted(self) -> str | None:
        m = self._marker
        if m is None or m.get("lost_at") is not None:
            return None
        until = m.get("new_until")
        if isinstance(until, (int, float)) and until > time.time():
            return (f"redis state: a new store (it had no marker): signed-in requests wait "
                    f"{until - time.time():.0f} s more for running replicas to write back what they remember "
                    "(`forwardauth state ack` ends the wait)")
        return None

    def problem(self) -> str | None:
        m = self._marker
        if m is not None and isinstance(m.get("lost_at"), (int, float)):
            return lost_message("redis state", float(m["lost_at"]))
        if m is None and self.losses:
            return "redis state: its marker is gone (Redis lost its data); writing back what this process remembers"
        return self.untrusted()

    async def restored(self) -> None:
        async with self._guard():
            raw = await self.r.eval(_MARK_LOST, 1, MARKER, uuid.uuid4().hex, repr(time.time()))
        self._marker_id = None
        self._seen(raw)

    async def acknowledge(self) -> str:
        async with self._guard():
            raw = await self.r.get(MARKER)
            m = json.loads(raw) if raw else None
            if m is None or not isinstance(m.get("id"), str):
                m = {"id": uuid.uuid4().hex, "created": time.time()}
                what = "no marker: wrote one (this store is the truth from now on)"
            elif m.get("lost_at") is not None:
                what = "the recorded loss is acknowledged"
            elif m.get("new_until") is not None:
                what = "the new store is acknowledged: no more waiting"
            else:
                what = "nothing to acknowledge"
            m["lost_at"] = m["new_until"] = None
            await self.r.set(MARKER, json.dumps(m))
        self._seen(json.dumps(m))
        return what

    async def _replicated(self) -> None:
        """With Sentinel: wait until a replica has the revocation just written (see the module)."""
        if not self.sentinel:
            return
        # WAIT counts only the writes of the connection it runs on, and a pooled
        # connection need not be the one that wrote. So one write on WAIT's own
        # connection first: replication is ordered, a replica that has it has ours.
        async with self.r.pipeline(transaction=False) as p:
            p.incr(P + "replicated")
            p.wait(1, REPLICA_WAIT_MS)
            _, n = await p.execute()
        if n < 1 and not self._unreplicated_reported:
            log.warning("redis state: a revocation is not on any replica yet (WAIT timed out): a failover now "
                        "would lose it, except in the processes that remember it")
        self._unreplicated_reported = n < 1

    async def close(self) -> None:
        # redis-py's get_message() can swallow a cancellation: the listener
        # also stops on its own at the next poll once _closing is set.
        self._closing = True
        if self._listener is not None:
            done, _ = await asyncio.wait({self._listener}, timeout=2.0)
            if not done:
                self._listener.cancel()
            self._listener = None
        if self._r is not None:
            with contextlib.suppress(Exception):
                await self._r.aclose()
            self._r = None

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` on every change event, and after each reconnect
        (messages may have been missed while the connection was down).
        The pub/sub connection opens with the first subscriber (the CLI never has one)."""
        self._subscribers.append(callback)
        if self._listener is None and not self._closing:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            cb()

    async def _listen(self) -> None:
        backoff = 0.2
        while not self._closing:
            client = self._client(health_check_interval=2)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL)
                self._notify()
                backoff = 0.2
                while not self._closing:
                    msg = await pubsub.get_message(timeout=0.5)
                    if msg is not None:
                        self._notify()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError) as exc:
                log.debug("redis pub/sub connection lost: %s", exc.__class__.__name__)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # --- revocations ---------------------------------------------------------

    async def revocation_version(self) -> int:
        async with self._guard():
            version, marker = await self.r.mget([P + "rev:version", MARKER])
        self._seen(marker)
        return int(version or 0)

    async def revocations(self, now: float) -> RevocationSnapshot:
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.get(P + "rev:version")
                p.hgetall(P + "epochs")
                p.zrangebyscore(P + "revoked", f"({now}", "+inf", withscores=True)
                version, epochs, revoked = await p.execute()
        return RevocationSnapshot(int(version or 0), {k: float(v) for k, v in epochs.items()},
                                  {k: float(v) for k, v in revoked})

    async def set_epoch(self, user: str, epoch: float) -> float:
        async with self._guard():
            out = await self.r.eval(_SET_EPOCH, 4, P + "epochs", P + "rev:version", CHANNEL, DEVICE_CHANNEL, user,
                                    repr(float(epoch)))
            await self._replicated()
        return float(out)

    async def reset_epoch(self, user: str, epoch: float) -> None:
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.hset(P + "epochs", user, repr(float(epoch)))
                p.incr(P + "rev:version")
                p.publish(CHANNEL, "rev")
                p.publish(DEVICE_CHANNEL, user)
                await p.execute()
            await self._replicated()

    async def revoke(self, ident: str, until: float) -> None:
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                # Trim first, only what has expired anyway (an entry is needed until its `until`).
                p.zremrangebyscore(P + "revoked", "-inf", f"({time.time()}")
                p.zadd(P + "revoked", {ident: until}, gt=True)
                p.incr(P + "rev:version")
                p.publish(CHANNEL, "rev")
                await p.execute()
            await self._replicated()

    async def claim_once(self, key: str, ttl: float, now: float) -> bool:
        # SET NX: one atomic command; the expiry runs on Redis's clock (`now` is not needed).
        async with self._guard():
            return bool(await self.r.set(P + "once:" + key, "1", nx=True, px=max(1, math.ceil(ttl * 1000))))

    # --- tokens (forwardauth.state.base.TokenStore) --------------------------------

    async def put_token(self, meta: TokenMeta) -> None:
        rec = meta.to_record()
        rec.pop("last_used", None)
        rec.pop("revoked", None)
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.hset(P + "tokens", meta.id, json.dumps(rec))
                p.incr(P + "tok:version")
                p.publish(CHANNEL, "tok")
                await p.execute()

    def _meta(self, raw: str, used: str | None, revoked: str | None) -> TokenMeta:
        d = json.loads(raw)
        d["last_used"] = float(used) if used else None
        d["revoked"] = float(revoked) if revoked else None
        return TokenMeta.from_record(d)

    async def get_token(self, token_id: str) -> TokenMeta | None:
        async with self._guard():
            async with self.r.pipeline(transaction=False) as p:
                p.hget(P + "tokens", token_id)
                p.hget(P + "tok:used", token_id)
                p.hget(P + "tok:revoked", token_id)
                raw, used, revoked = await p.execute()
        return self._meta(raw, used, revoked) if raw else None

    async def list_tokens(self, account: str | None = None) -> list[TokenMeta]:
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.hgetall(P + "tokens")
                p.hgetall(P + "tok:used")
                p.hgetall(P + "tok:revoked")
                recs, used, revoked = await p.execute()
        out = [self._meta(raw, used.get(i), revoked.get(i)) for i, raw in recs.items()]
        return sorted((t for t in out if account is None or t.account == account), key=lambda t: (t.created, t.id))

    async def revoke_token(self, token_id: str, when: float) -> bool:
        async with self._guard():
            if not await self.r.hexists(P + "tokens", token_id):
                return False
            if not await self.r.hsetnx(P + "tok:revoked", token_id, repr(float(when))):
                return False
            async with self.r.pipeline(transaction=True) as p:
                p.incr(P + "tok:version")
                p.publish(CHANNEL, "tok")
                await p.execute()
            await self._replicated()
        return True

    async def touch_tokens(self, used: dict[str, float]) -> None:
        if not used:
            return
        args: list[str] = []
        for i, t in used.items():
            args += [i, repr(float(t))]
        async with self._guard():
            await self.r.eval(_TOUCH, 1, P + "tok:used", *args)

    async def tokens_version(self) -> int:
        async with self._guard():
            return int(await self.r.get(P + "tok:version") or 0)

    async def put_dbcreds(self, account: str, creds: SealedCreds) -> None:
        async with self._guard():
            await self.r.hset(P + "dbcreds", account, json.dumps(
                {"sealed": creds.sealed, "updated": creds.updated, "updated_by": creds.updated_by}))

    async def get_dbcreds(self, account: str) -> SealedCreds | None:
        async with self._guard():
            raw = await self.r.hget(P + "dbcreds", account)
        if not raw:
            return None
        d = json.loads(raw)
        return SealedCreds(str(d["sealed"]), float(d["updated"]), str(d["updated_by"]))

    async def delete_dbcreds(self, account: str) -> bool:
        async with self._guard():
            return bool(await self.r.hdel(P + "dbcreds", account))

    # --- accounts (forwardauth.state.base.AccountStore) ----------------------------

    async def get_account(self, name: str) -> Account | None:
        async with self._guard():
            raw = await self.r.get(P + "acct:" + name)
        return Account.from_json(raw) if raw else None

    async def _accounts_changed(self) -> None:
        """Tell every replica's token index (version + pub/sub), as token writes do."""
        async with self.r.pipeline(transaction=True) as p:
            p.incr(P + "tok:version")
            p.publish(CHANNEL, "tok")
            await p.execute()

    async def add_account(self, account: Account) -> bool:
        async with self._guard():
            ok = await self.r.set(P + "acct:" + account.username, account.to_json(), nx=True)
            if ok:
                await self.r.sadd(P + "accounts", account.username)
                await self._accounts_changed()
        return bool(ok)

    async def _update(self, name: str, change: Callable[[Account | None], Account | None],
                      notify: bool = True) -> Any:
        """Optimistic transaction on one account (WATCH / MULTI, retried on conflict)."""
        key = P + "acct:" + name
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                while True:
                    try:
                        await p.watch(key)
                        raw = await p.get(key)
                        old = Account.from_json(raw) if raw else None
                        new = change(old)
                        if new is None:
                            await p.unwatch()
                            return False
                        p.multi()
                        p.set(key, new.to_json())
                        p.sadd(P + "accounts", name)
                        if notify:
                            p.incr(P + "tok:version")
                            p.publish(CHANNEL, "tok")
                        await p.execute()
                        return True
                    except WatchError:
                        continue

    async def put_account(self, account: Account) -> None:
        def change(old: Account | None) -> Account:
            if old is None:
                return account
            step = account.totp_last_step
            if old.totp_secret_enc == account.totp_secret_enc:
                step = max(step, old.totp_last_step)
            return replace(account, totp_last_step=step, created=old.created)

        await self._update(account.username, change)
        async with self._guard():
            await self._replicated()  # a lock, a group change

    async def delete_account(self, name: str) -> bool:
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.delete(P + "acct:" + name)
                p.srem(P + "accounts", name)
                p.incr(P + "tok:version")
                p.publish(CHANNEL, "tok")
                n, *_ = await p.execute()
        return n == 1

    async def list_accounts(self) -> list[Account]:
        async with self._guard():
            names = sorted(cast("set[str]", await self.r.smembers(P + "accounts")))  # decode_responses
            if not names:
                return []
            raws = await self.r.mget([P + "acct:" + n for n in names])
        return [Account.from_json(r) for r in raws if r]

    async def claim_totp_step(self, name: str, step: int) -> bool:
        def change(old: Account | None) -> Account | None:
            if old is None or old.totp_secret_enc is None or old.totp_last_step >= step:
                return None
            return replace(old, totp_last_step=step)

        return await self._update(name, change, notify=False)  # a used TOTP step: nothing for the index

    # --- failure counters (forwardauth.state.base.FailureStore) --------------------

    async def record_failure(self, key: str, now: float, window: float) -> int:
        k = P + "fail:" + key
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                p.zremrangebyscore(k, "-inf", now - window)
                p.zadd(k, {uuid.uuid4().hex: now})
                p.zcount(k, f"({now - window}", now)
                p.expire(k, int(window) + int(SWEEP_GRACE))
                _, _, count, _ = await p.execute()
        return int(count)

    async def failures(self, key: str, now: float, window: float) -> tuple[int, float | None]:
        async with self._guard():
            items = cast("list[tuple[str, float]]", await self.r.zrangebyscore(
                P + "fail:" + key, f"({now - window}", now, withscores=True))
        return len(items), (max(s for _, s in items) if items else None)

    async def clear_failures(self, key: str) -> None:
        async with self._guard():
            await self.r.delete(P + "fail:" + key)
