"""Chromium's virtual authenticators against forwardauth's WebAuthn verification.

Headless Debian Chromium (harness.browser) with CDP virtual authenticators
(harness.webauthn) registers and uses credentials on a small aiohttp server
of its own that calls forwardauth.webauthn's service the way the part's
routes do (sealed challenge in a cookie, bound to the test session, claimed
once in a MemoryStore), without the rest of the app: what each virtual
authenticator reports (flags, counters, backup state) is checked here, close
to the verification. The full journeys through nginx are in
tests/e2e/test_webauthn_browser.py. Page on http://auth.fa.localhost:PORT,
RP ID fa.localhost (an IP address cannot be an RP ID).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from typing import Any

import pytest
import yaml
from aiohttp import web

from forwardauth.core.config import Reader, parse_config
from forwardauth.core.keyring import Key, KeyRing
from forwardauth.core.sealing import Sealer
from forwardauth.state.memory import MemoryStore
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import Ceremony, ChallengeError
from forwardauth.webauthn.service import AMR_PRESENCE, AMR_VERIFIED, WebAuthnService
from forwardauth.webauthn.settings import parse
from forwardauth.webauthn.verify import Refused
from harness.browser import chromium
from harness.webauthn import PASSKEY, SECURITY_KEY, SYNCED_PASSKEY, ceremony, virtual_authenticators

pytestmark = pytest.mark.browser

PAGE = "<!doctype html><html><head><title>webauthn harness</title></head><body>harness</body></html>"
LEVELS_YAML = """
server: {public_url: "http://auth.fa.localhost:PORT"}
keys: {inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]}
state: memory://
levels: [{name: password}, {name: mfa, amr: [mfa]}, {name: hardware, amr: [hwk]}]
policy: {rules: []}
"""


class CeremonyServer:
    """The ceremonies over HTTP, on a loop of its own (Playwright's sync API owns the test thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sessions: dict[str, str] = {}  # sid -> user
        self.sealer = Sealer(KeyRing((Key("k1", bytes(range(32))),)), challenges.SEAL_PURPOSE)
        self.store = MemoryStore()
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/as/{user}", self.sign_in_as)
        for kind in ("register", "step-up", "sign-in"):
            app.router.add_post(f"/{kind}/options", self.options)
            app.router.add_post(f"/{kind}", self.answer)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.origin = f"http://auth.fa.localhost:{self.port}"
        cfg = parse_config(LEVELS_YAML.replace("PORT", str(self.port)), "harness.yaml")
        r = Reader("harness.yaml")
        section = yaml.safe_load("{rp_id: fa.localhost, level_user_verified: hardware, level_presence: mfa}")
        settings = parse(r, section, {"server": cfg.server, "levels": cfg.levels})
        assert settings is not None and r.problems == [], r.problems
        self.service = WebAuthnService(settings, cfg.levels, self.store)
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def sign_in_as(self, request: web.Request) -> web.Response:
        sid = secrets.token_urlsafe(16)
        self.sessions[sid] = request.match_info["user"]
        resp = web.Response(text=PAGE, content_type="text/html")
        resp.set_cookie("sid", sid, httponly=True)
        return resp

    async def options(self, request: web.Request) -> web.Response:
        kind, body, now = request.path.split("/")[1], await request.json(), time.time()
        sid = request.cookies.get("sid", "")
        user = self.sessions.get(sid)
        try:
            if kind == "register":
                challenge, options = await self.service.start_registration(user, sid, user, user.title(), now)
            elif kind == "step-up":
                challenge, options = await self.service.start_step_up(user, sid, body["target"], now)
            else:
                challenge, options = await self.service.start_sign_in(now)
        except Refused as exc:
            return web.json_response({"reason": exc.reason.name, "detail": exc.detail}, status=403)
        resp = web.json_response(options)
        resp.set_cookie("wa", challenges.seal(self.sealer, challenge), httponly=True, max_age=120)
        return resp

    async def answer(self, request: web.Request) -> web.Response:
        kind, body, now = request.path.split("/")[1], await request.json(), time.time()
        ceremony_of = {"register": Ceremony.REGISTER, "step-up": Ceremony.STEP_UP, "sign-in": Ceremony.SIGN_IN}
        try:
            challenge = challenges.open_sealed(self.sealer, request.cookies.get("wa", ""), ceremony_of[kind], now,
                                               self.service.settings.timeout, sid=request.cookies.get("sid"))
            if kind == "register":
                c = await self.service.finish_registration(challenge, body["credential"], body.get("name", "key"),
                                                           now)
                return web.json_response({"id": c.key, "name": c.name, "sign_count": c.sign_count,
                                          "user_verifying": c.user_verifying, "discoverable": c.discoverable,
                                          "backup_eligible": c.backup_eligible, "backed_up": c.backed_up,
                                          "transports": list(c.transports), "aaguid": c.aaguid})
            proof = await self.service.finish_assertion(challenge, body["credential"], now)
            return web.json_response({"user": proof.user, "level": proof.level.name, "amr": list(proof.amr),
                                      "user_verified": proof.user_verified, "backed_up": proof.backed_up})
        except ChallengeError as exc:
            return web.json_response({"reason": "CHALLENGE", "detail": str(exc)}, status=400)
        except Refused as exc:
            return web.json_response({"reason": exc.reason.name, "detail": exc.detail}, status=403)


@pytest.fixture(scope="module")
def server():
    s = CeremonyServer()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium(hosts=()) as b:  # *.localhost needs no resolver rule: Chromium maps it to loopback
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context, context.new_page()
    context.close()


def run(page, server, kind: str, **extra) -> dict:
    verb = "create" if kind == "register" else "get"
    return ceremony(page, f"{server.origin}/{kind}/options", f"{server.origin}/{kind}", verb, extra)


def test_passkey_registers_steps_up_and_signs_in_alone(server, page):
    context, page = page
    with virtual_authenticators(context, page) as auth:
        aid = auth.add(PASSKEY)
        page.goto(f"{server.origin}/as/alice")
        reg = run(page, server, "register", name="Laptop")
        assert reg["status"] == 200, reg
        assert {k: reg["body"][k] for k in ("name", "sign_count", "user_verifying", "discoverable", "backup_eligible",
                                            "backed_up", "transports", "aaguid")} == {
            "name": "Laptop", "sign_count": 1, "user_verifying": True, "discoverable": True,
            "backup_eligible": False, "backed_up": False, "transports": ["internal"],
            "aaguid": "01020304-0506-0708-0102-030405060708"}
        held = auth.credentials(aid)
        assert [(c["credentialId"], c["isResidentCredential"], c["rpId"], c["signCount"]) for c in held] == [
            (reg["body"]["id"], True, "fa.localhost", 1)]

        up = run(page, server, "step-up", target="hardware")
        assert (up["status"], up["body"]) == (200, {"user": "alice", "level": "hardware", "amr": list(AMR_VERIFIED),
                                                    "user_verified": True, "backed_up": False})

        context.clear_cookies()  # signed out: no session, the passkey alone names the user
        page.goto(f"{server.origin}/")
        signin = run(page, server, "sign-in")
        assert (signin["status"], signin["body"]["user"], signin["body"]["level"]) == (200, "alice", "hardware")
        assert server.call(server.store.webauthn_credential(auth_id(reg))).sign_count == 3 == auth.credentials(aid)[0][
            "signCount"]

        # Removed on the server: the browser still holds it, forwardauth no longer knows it.
        assert server.call(server.store.remove_webauthn_credential("alice", auth_id(reg))) is True
        gone = run(page, server, "sign-in")
        assert (gone["status"], gone["body"]["reason"]) == (403, "UNKNOWN_CREDENTIAL")


def auth_id(reg: dict) -> bytes:
    from forwardauth.core.keyring import b64d

    return b64d(reg["body"]["id"])


def test_security_key_without_uv_reaches_mfa_not_hardware(server, page):
    context, page = page
    with virtual_authenticators(context, page) as auth:
        auth.add(SECURITY_KEY)
        page.goto(f"{server.origin}/as/bob")
        reg = run(page, server, "register", name="YubiKey")
        assert reg["status"] == 200, reg
        assert (reg["body"]["user_verifying"], reg["body"]["discoverable"], reg["body"]["transports"]) == (
            False, False, ["usb"])
        mfa = run(page, server, "step-up", target="mfa")
        assert (mfa["status"], mfa["body"]) == (200, {"user": "bob", "level": "mfa", "amr": list(AMR_PRESENCE),
                                                      "user_verified": False, "backed_up": False})
        # hardware asks for user verification, which this key cannot do: the browser refuses.
        assert run(page, server, "step-up", target="hardware") == {"status": 0, "error": "NotAllowedError"}
        # Not discoverable: nothing to offer for a sign-in without a name.
        assert run(page, server, "sign-in") == {"status": 0, "error": "NotAllowedError"}


def test_synced_passkey_reports_backup_flags(server, page):
    context, page = page
    with virtual_authenticators(context, page) as auth:
        auth.add(SYNCED_PASSKEY)
        page.goto(f"{server.origin}/as/carol")
        reg = run(page, server, "register")
        assert (reg["body"]["backup_eligible"], reg["body"]["backed_up"]) == (True, True)
        up = run(page, server, "step-up", target="hardware")
        assert (up["body"]["level"], up["body"]["backed_up"]) == ("hardware", True)


def test_failed_user_verification_is_refused_by_the_browser(server, page):
    context, page = page
    with virtual_authenticators(context, page) as auth:
        aid = auth.add(PASSKEY)
        page.goto(f"{server.origin}/as/dave")
        assert run(page, server, "register")["status"] == 200
        auth.set_user_verified(aid, False)  # a wrong PIN / unknown finger
        assert run(page, server, "step-up", target="hardware") == {"status": 0, "error": "NotAllowedError"}
        auth.set_user_verified(aid, True)
        assert run(page, server, "step-up", target="hardware")["body"]["level"] == "hardware"


def test_a_challenge_belongs_to_its_session(server, page):
    context, page = page
    with virtual_authenticators(context, page) as auth:
        auth.add(PASSKEY)
        page.goto(f"{server.origin}/as/erin")
        assert run(page, server, "register")["status"] == 200
        # Options fetched in erin's session, answered after the session changed (another sign-in).
        result = page.evaluate("""async ([origin]) => {
          const post = (u, b) => fetch(origin + u, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                    body: JSON.stringify(b)});
          const options = await (await post('/step-up/options', {target: 'hardware'})).json();
          const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
          const c = await navigator.credentials.get({publicKey});
          await fetch(origin + '/as/erin');
          const r = await post('/step-up', {credential: c.toJSON()});
          return {status: r.status, body: await r.json()};
        }""", [server.origin])
        assert result == {"status": 400, "body": {"reason": "CHALLENGE", "detail": "challenge of another session"}}
