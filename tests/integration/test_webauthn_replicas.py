"""Two replicas on one Redis, at the level of the WebAuthn service: a challenge issued by
one is answered on the other, once; a credential registered through one is used and
locked through the other. (Through two real `forwardauth serve` processes: see the
end-to-end tests once the routes exist.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from forwardauth.core.config import parse_config
from forwardauth.core.keyring import Key, KeyRing
from forwardauth.core.sealing import Sealer
from forwardauth.state.redis import RedisStore
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import Ceremony
from forwardauth.webauthn.service import WebAuthnService
from forwardauth.webauthn.settings import WebAuthnSettings
from forwardauth.webauthn.verify import Reason, Refused
from harness.softkey import SoftAuthenticator

pytestmark = pytest.mark.redis

ORIGIN = "https://auth.example.com"
SETTINGS = WebAuthnSettings("example.com", (ORIGIN,), "hardware", "mfa")
LEVELS = parse_config("""
keys: {inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]}
state: memory://
levels: [{name: password}, {name: mfa}, {name: hardware}]
policy: {rules: []}
""", "test.yaml").levels
RING = KeyRing((Key("k1", bytes(range(32))),))  # the key ring every replica shares


@pytest.fixture
async def replicas(shared_redis):
    stores = [RedisStore(shared_redis.url), RedisStore(shared_redis.url)]
    for s in stores:
        await s.open()
    await stores[0].r.flushdb()
    # Each replica has its own sealer object over the same ring, as separate processes would.
    yield [(WebAuthnService(SETTINGS, LEVELS, s), Sealer(RING, challenges.SEAL_PURPOSE)) for s in stores]
    for s in stores:
        await s.close()


async def test_a_challenge_issued_on_one_replica_is_answered_on_the_other_once(replicas):
    (a, seal_a), (b, seal_b) = replicas
    key = SoftAuthenticator()
    c, options = await a.start_registration("alice", "s1", "alice", "Alice", time.time())
    token = challenges.seal(seal_a, c)  # the cookie the browser carries
    answer = key.create(options, ORIGIN)
    opened = challenges.open_sealed(seal_b, token, Ceremony.REGISTER, time.time(), SETTINGS.timeout, sid="s1")
    cred = await b.finish_registration(opened, answer, "key", time.time())
    with pytest.raises(Refused) as info:  # the same answer again, on the first replica
        await a.finish_registration(opened, answer, "key", time.time())
    assert info.value.reason is Reason.CHALLENGE_USED
    assert [c.id for c in await a.store.webauthn_credentials("alice")] == [cred.id]

    c, options = await b.start_step_up("alice", "s1", "hardware", time.time())
    token = challenges.seal(seal_b, c)
    answer = key.get(options, ORIGIN)
    opened = challenges.open_sealed(seal_a, token, Ceremony.STEP_UP, time.time(), SETTINGS.timeout, sid="s1")
    results = await asyncio.gather(a.finish_assertion(opened, answer, time.time()),
                                   b.finish_assertion(opened, answer, time.time()), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Proof", "Refused"]
    assert [r.reason for r in results if isinstance(r, Refused)] == [Reason.CHALLENGE_USED]


async def test_a_regression_seen_by_one_replica_locks_the_credential_for_both(replicas):
    (a, _), (b, _) = replicas
    key = SoftAuthenticator()
    c, options = await a.start_registration("alice", "s1", "alice", "Alice", time.time())
    cred = await a.finish_registration(c, key.create(options, ORIGIN), "key", time.time())
    c, options = await a.start_step_up("alice", "s1", "hardware", time.time())
    await a.finish_assertion(c, key.get(options, ORIGIN, counter=10), time.time())
    c, options = await b.start_step_up("alice", "s1", "hardware", time.time())
    with pytest.raises(Refused) as info:
        await b.finish_assertion(c, key.get(options, ORIGIN, counter=4), time.time())
    assert (info.value.reason, info.value.detail) == (Reason.COUNTER, "10 -> 4")
    assert (await a.store.webauthn_credential(cred.id)).locked == ("signature counter went from 10 to 4: possible "
                                                                   "cloned authenticator")
