"""An OpenID provider that misbehaves on purpose: a small aiohttp server on loopback.

The real provider (tests/oidc_provider) answers like a provider should; this
one answers exactly what a test sets, signed with its own ES256 key (so the
ID tokens are genuine to forwardauth):

    op = RogueProvider()
    await op.start()
    op.split = {"token", "jwks"}      # these answers arrive in two pieces, `pause` apart
    op.claims = {...}                 # the next ID token's claims (op.id_claims(nonce) gives valid ones)
    op.payload = b'{"sub":"alice","sub":"admin",...}'   # or its exact bytes (duplicate keys)

The authorization endpoint is never visited: a test reads the nonce from
forwardauth's redirect and calls forwardauth's callback itself, with any code.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from joserfc import jws
from joserfc.jwk import ECKey

CLIENT_ID = "forwardauth"
CLIENT_SECRET = "rogue-secret"
ACR = "urn:forwardauth:acr:password"


class RogueProvider:
    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "rogue-1", "use": "sig", "alg": "ES256"})
        self.split: set[str] = set()  # "discovery", "jwks", "token", "userinfo": sent in two pieces
        self.pause = 0.1
        self.claims: dict[str, Any] = {}
        self.payload: bytes | None = None
        self.userinfo: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def id_claims(self, nonce: str, **extra: Any) -> dict[str, Any]:
        """Claims forwardauth accepts for a login with `nonce`, with `extra` laid over them."""
        now = int(time.time())
        return {"iss": self.issuer, "aud": CLIENT_ID, "sub": "alice", "exp": now + 300, "iat": now,
                "nonce": nonce, "acr": ACR, "auth_time": now, **extra}

    def id_token(self) -> str:
        payload = self.payload if self.payload is not None else json.dumps(self.claims).encode()
        return jws.serialize_compact({"alg": "ES256", "kid": "rogue-1"}, payload, self.key)

    async def start(self) -> RogueProvider:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        app.router.add_get("/userinfo", self._userinfo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _send(self, request: web.Request, name: str, data: dict[str, Any]) -> web.StreamResponse:
        self.hits[name] = self.hits.get(name, 0) + 1
        body = json.dumps(data).encode()
        if name not in self.split:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        half = len(body) // 2
        await resp.write(body[:half])  # flushed: the client sees the first piece alone
        await asyncio.sleep(self.pause)
        await resp.write(body[half:])
        await resp.write_eof()
        return resp

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        i = self.issuer
        return await self._send(request, "discovery", {
            "issuer": i, "authorization_endpoint": f"{i}/authorize", "token_endpoint": f"{i}/token",
            "jwks_uri": f"{i}/jwks", "userinfo_endpoint": f"{i}/userinfo",
            "id_token_signing_alg_values_supported": ["ES256"]})

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, "jwks", {"keys": [self.key.as_dict(private=False)]})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return await self._send(request, "token", {"access_token": "at-1", "token_type": "Bearer",
                                                   "expires_in": 60, "id_token": self.id_token()})

    async def _userinfo(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, "userinfo", self.userinfo)
