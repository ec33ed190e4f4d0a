"""Redis: the `WebAuthnStore` methods (a mixin of `RedisStore`).

Keys, under the store's `forwardauth:` prefix:

    wa:cred:<id>    a credential (JSON record; <id> is the credential id in base64url)
    wa:user:<user>  set of the user's credential ids (base64url)

Every write is an optimistic transaction (WATCH the keys it reads, MULTI,
retried on conflict), so the duplicate and limit checks of an insert and
the counter rule of a use (`counter_advances`, the same Python function every
backend applies) are atomic across replicas: of two uses with one counter,
exactly one advances.

With Sentinel, every write waits until a replica has it (the store's
`_replicated`, as revocations do): a failover right after a removal, or a
lock after a counter went back, does not bring the key back.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from forwardauth.state.records import (
    DUPLICATE_MESSAGE,
    Advance,
    DuplicateCredential,
    TooManyCredentials,
    WebAuthnCredential,
    check_credential_name,
    counter_advances,
    too_many_message,
)

P = "forwardauth:"


def _cred_key(credential_id: bytes) -> str:
    return P + "wa:cred:" + base64.urlsafe_b64encode(credential_id).rstrip(b"=").decode("ascii")


def _user_key(user: str) -> str:
    return P + "wa:user:" + user


class RedisWebAuthn:
    # Provided by RedisStore.
    @property
    def r(self) -> aioredis.Redis:
        raise NotImplementedError

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def _replicated(self) -> None:
        raise NotImplementedError

    async def _optimistic(self, keys: list[str], step: Callable[[Any], Any]) -> Any:
        """WATCH `keys`, run `step(pipe)` (reads, then pipe.multi() and writes, or a result
        without writes), EXECUTE; again when a watched key changed meanwhile."""
        async with self._guard():
            async with self.r.pipeline(transaction=True) as p:
                while True:
                    try:
                        await p.watch(*keys)
                        out = await step(p)
                        if p.explicit_transaction:
                            await p.execute()
                            await self._replicated()
                        else:
                            await p.unwatch()
                        return out
                    except WatchError:
                        continue

    async def webauthn_credentials(self, user: str) -> list[WebAuthnCredential]:
        async with self._guard():
            ids = sorted(str(i) for i in await self.r.smembers(_user_key(user)))  # str: decode_responses
            raws = await self.r.mget([P + "wa:cred:" + i for i in ids]) if ids else []
        creds = [WebAuthnCredential.from_json(raw) for raw in raws if raw]
        return sorted((c for c in creds if c.user == user), key=lambda c: (c.created, c.id))

    async def webauthn_credential(self, credential_id: bytes) -> WebAuthnCredential | None:
        async with self._guard():
            raw = await self.r.get(_cred_key(credential_id))
        return WebAuthnCredential.from_json(raw) if raw else None

    async def add_webauthn_credential(self, credential: WebAuthnCredential, max_per_user: int) -> None:
        key, ukey = _cred_key(credential.id), _user_key(credential.user)

        async def step(p: Any) -> None:
            if await p.exists(key):
                raise DuplicateCredential(DUPLICATE_MESSAGE)
            if await p.scard(ukey) >= max_per_user:
                raise TooManyCredentials(too_many_message(max_per_user))
            p.multi()
            p.set(key, credential.to_json())
            p.sadd(ukey, credential.key)

        await self._optimistic([key, ukey], step)

    async def _own(self, p: Any, user: str, credential_id: bytes) -> WebAuthnCredential | None:
        raw = await p.get(_cred_key(credential_id))
        cred = WebAuthnCredential.from_json(raw) if raw else None
        return cred if cred is not None and cred.user == user else None

    async def rename_webauthn_credential(self, user: str, credential_id: bytes, name: str) -> bool:
        name = check_credential_name(name)
        key = _cred_key(credential_id)

        async def step(p: Any) -> bool:
            cred = await self._own(p, user, credential_id)
            if cred is None:
                return False
            p.multi()
            p.set(key, replace(cred, name=name).to_json())
            return True

        return bool(await self._optimistic([key], step))

    async def remove_webauthn_credential(self, user: str, credential_id: bytes) -> bool:
        key, ukey = _cred_key(credential_id), _user_key(user)

        async def step(p: Any) -> bool:
            cred = await self._own(p, user, credential_id)
            if cred is None:
                return False
            p.multi()
            p.delete(key)
            p.srem(ukey, cred.key)
            return True

        return bool(await self._optimistic([key, ukey], step))

    async def remove_webauthn_credentials(self, user: str) -> int:
        ukey = _user_key(user)

        async def step(p: Any) -> int:
            ids = list(await p.smembers(ukey))
            p.multi()
            for i in ids:
                p.delete(P + "wa:cred:" + i)
            p.delete(ukey)
            return len(ids)

        return int(await self._optimistic([ukey], step))

    async def advance_webauthn_credential(self, credential_id: bytes, sign_count: int, backed_up: bool,
                                          user_verified: bool, now: float, lock_reason: str) -> Advance:
        key = _cred_key(credential_id)

        async def step(p: Any) -> Advance:
            raw = await p.get(key)
            if not raw:
                return Advance.GONE
            cred = WebAuthnCredential.from_json(raw)
            if cred.locked is not None:
                return Advance.LOCKED
            p.multi()
            if not counter_advances(cred.sign_count, sign_count):
                p.set(key, replace(cred, locked=lock_reason).to_json())
                return Advance.REGRESSED
            p.set(key, cred.used(sign_count, backed_up, user_verified, now).to_json())
            return Advance.ADVANCED

        return Advance(await self._optimistic([key], step))

