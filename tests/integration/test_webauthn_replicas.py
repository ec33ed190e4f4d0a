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


# --- two real `forwardauth serve` processes on one Redis ------------------------------------

WEB_ORIGIN = "http://auth.fa.localhost"  # what the browser would be on (both replicas behind one name)
HW = "http://app.test/hw/x"


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_redis):
    import subprocess
    import sys

    from harness.tokens import TokenServer

    work = tmp_path_factory.mktemp("webauthn-replicas")  # (a user of its own: the shared Redis holds others')
    extra = {
        "levels": [{"name": "password", "acr": ["urn:fa:password"]}, {"name": "mfa", "acr": ["urn:fa:mfa"]},
                   {"name": "hardware", "acr": ["urn:fa:hwk"]}],
        "webauthn": {"rp_id": "fa.localhost", "origins": [WEB_ORIGIN], "level_user_verified": "hardware"},
        "policy": {"default": "deny", "rules": [{"hosts": ["app.test"], "paths": ["/hw/"], "level": "hardware"},
                                                {"hosts": ["app.test"], "level": "password"}]},
    }
    a = TokenServer(work, state=shared_redis.url, extra=extra)
    b = TokenServer(work, state=shared_redis.url, extra=extra)
    proc = subprocess.run([sys.executable, "-m", "forwardauth", "users", "add", "carol", "-c", str(a.config),
                           "--password-stdin"], input="alice-long-password-1\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    with a, b:
        yield a, b


async def test_two_processes_share_challenges_once(served):
    import re

    import aiohttp

    a, b = served
    key = SoftAuthenticator()
    url_a, url_b = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # cookies for both ports
        page = await (await s.get(f"{url_a}/oauth2/sign_in")).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        r = await s.post(f"{url_a}/oauth2/sign_in", data={"csrf": csrf, "username": "carol",
                                                           "password": "alice-long-password-1"}, allow_redirects=False)
        assert r.status == 303, await r.text()
        r = await s.get(f"{url_a}/oauth2/webauthn", allow_redirects=False)
        page = await r.text()
        assert r.status == 200, (r.status, r.headers.get("Location"), [c.key for c in s.cookie_jar])
        csrf = re.search(r'data-csrf="([^"]+)"', page).group(1)

        async def post(url: str, body: dict) -> tuple[int, dict]:
            r = await s.post(url, json=body, allow_redirects=False)
            return r.status, await r.json()

        # Registration: options from A, the answer on B; the same answer again on A is refused.
        st, options = await post(f"{url_a}/oauth2/webauthn/register/options", {"csrf": csrf, "name": "k"})
        assert st == 200
        sealed = {c.key: c.value for c in s.cookie_jar if "webauthn" in c.key}
        body = {"csrf": csrf, "name": "k", "credential": key.create(options, WEB_ORIGIN)}
        assert (await post(f"{url_b}/oauth2/webauthn/register", body))[0] == 200
        # Replayed on A with a copy of the challenge cookie (B cleared it), after an administrator removed
        # the key (else the replay would stop earlier: a second key needs a recent mfa).
        assert a.cli("webauthn", "remove", "carol", "--all") == "carol: 1 security key(s) and passkey(s) removed\n"
        s.cookie_jar.update_cookies(sealed)
        assert await post(f"{url_a}/oauth2/webauthn/register", body) == (
            400, {"error": "This request has expired or was already used. Please try again."})

        options = (await post(f"{url_a}/oauth2/webauthn/register/options", {"csrf": csrf, "name": "k"}))[1]
        assert (await post(f"{url_b}/oauth2/webauthn/register", {**body, "credential": key.create(
            options, WEB_ORIGIN)}))[0] == 200

        # Step-up: options from B, the answer on A (once); the session it sets is good on both.
        page = await (await s.get(f"{url_b}/oauth2/webauthn/step_up", params={"rd": HW})).text()
        csrf = re.search(r'data-csrf="([^"]+)"', page).group(1)
        st, options = await post(f"{url_b}/oauth2/webauthn/step_up/options", {"csrf": csrf, "rd": HW})
        assert st == 200 and options["userVerification"] == "required"
        body = {"csrf": csrf, "rd": HW, "credential": key.get(options, WEB_ORIGIN)}
        results = await asyncio.gather(post(f"{url_a}/oauth2/webauthn/step_up", body),
                                       post(f"{url_b}/oauth2/webauthn/step_up", body))
        assert sorted(st for st, _ in results) == [200, 400]  # at the same moment on both: once
        assert (200, {"redirect": HW}) in results
        session = next(c.value for c in s.cookie_jar if c.key == "forwardauth")
        for server in (a, b):
            reply = server.decide("/hw/x", cookie=session)
            assert (reply.status, reply.header("X-Auth-Request-Level")) == (200, "hardware")
