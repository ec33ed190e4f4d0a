"""What the tokens part adds to every decision: bearer tokens as a credential,
and the identity assertion header on an allow. No aiohttp: `forwardauth
explain --token` runs this very code.

`BearerTokens` holds what the decisions read, in memory: the token index
(records and accounts, refreshed in the background by the web part, or
loaded once by explain), the verifier's caches, the last-use recorder and
the assertion signer. Per runtime it gives the pipeline its `DecisionHooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cachetools import LRUCache

from forwardauth.core.authorize import DecisionHooks
from forwardauth.core.credentials import Credential, RevocationView, Source, Status
from forwardauth.core.keyring import KeyRing
from forwardauth.core.request import OriginalRequest
from forwardauth.core.runtime import Runtime, resolve_path
from forwardauth.core.session import Session
from forwardauth.state.base import StateStore
from forwardauth.tokens import settings as settings_mod
from forwardauth.tokens.bearer import TokenVerifier, bearer_token, looks_like_ours, principal
from forwardauth.tokens.index import TokenIndex, UsageRecorder
from forwardauth.tokens.jwt import JwtError, JwtSigner, load_hs512_secret

log = logging.getLogger("forwardauth.tokens")

MALFORMED = Credential(None, "malformed", False, Status.REFUSED, Source.TOKEN)
UNCHECKABLE = Credential(None, "state store unreachable past the grace period", False, Status.UNCHECKABLE,
                         Source.TOKEN)


def make_signer(runtime: Runtime) -> JwtSigner:
    cfg = runtime.config
    s = settings_mod.settings(cfg).jwt
    issuer = s.issuer or cfg.server.public_url
    if s.algorithm == "HS512":
        assert s.hs512_secret_file is not None
        return JwtSigner.hs512(load_hs512_secret(resolve_path(cfg, s.hs512_secret_file)), issuer)
    return JwtSigner.es256(runtime.keyring, issuer)


class BearerTokens:
    """The tokens part's in-memory state for decisions, and its hooks."""

    def __init__(self, revocations: RevocationView):
        self.revocations = revocations
        self.index = TokenIndex()
        self.usage = UsageRecorder()
        self._verifier: TokenVerifier | None = None
        self._signer: tuple[Runtime, JwtSigner] | None = None
        self.assertions: LRUCache[tuple[str, str, str, str], tuple[str, float]] = LRUCache(maxsize=20000)

    async def load(self, store: StateStore, full_every: float = 10.0) -> None:
        """Read the token index from the store once (explain; the server refreshes it in the background)."""
        await self.index.refresh(store, full_every, force=True)

    def verifier(self, ring: KeyRing) -> TokenVerifier:
        v = self._verifier
        if v is None or v.ring is not ring:
            v = self._verifier = TokenVerifier(ring)
        return v

    def signer(self, runtime: Runtime) -> JwtSigner:
        """Built once per runtime (a reload may change keys or settings)."""
        if self._signer is not None and self._signer[0] is runtime:
            return self._signer[1]
        self._signer = (runtime, make_signer(runtime))
        self.assertions.clear()
        return self._signer[1]

    def hooks(self, runtime: Runtime) -> DecisionHooks:
        """The credential source (bearer tokens) and, when `tokens.assertion.enabled`, the assertion header."""
        s = settings_mod.settings(runtime.config)
        verifier = self.verifier(runtime.keyring)
        levels = runtime.config.levels
        index, usage, revocations = self.index, self.usage, self.revocations

        def credential(headers: Mapping[str, str], req: OriginalRequest, now: float,
                       checkable: bool) -> Credential | None:
            auth = headers.get("Authorization")
            if auth is None:
                return None
            # A token accepted before: every per-request check again (record and
            # account unchanged, expiry and the other caveats, revocation), without
            # parsing, the signature memo and the principal rebuild.
            if checkable:
                known = verifier.known(auth, req, index, revocations, now)
                if known is not None:
                    usage.used(known.session.sid, now)  # type: ignore[union-attr]
                    return known
            token = bearer_token(auth)
            if token is None:
                return MALFORMED if looks_like_ours(auth) else None
            if not checkable:
                return UNCHECKABLE
            found = principal(verifier, token, req, index, revocations, levels, now)
            if found.session is not None:
                usage.used(found.session.sid, now)
                verifier.remember(auth, token, found.session)
            return found

        if not s.assertion.enabled:
            return DecisionHooks(credential=credential)
        header, life = s.assertion.header, s.assertion.lifetime

        def assertion(session: Session, req: OriginalRequest, now: float) -> tuple[
                tuple[tuple[str, str], ...], float] | None:
            signed = self._assertion(runtime, session, req.host, life, now)
            if signed is None:
                return None
            return ((header, signed[0]),), signed[1]

        return DecisionHooks(credential=credential, allow_headers=assertion)

    def _assertion(self, runtime: Runtime, session: Session, host: str, life: float,
                   now: float) -> tuple[str, float] | None:
        """A short-lived JWT for the app, audience = the requested host, and when to
        sign a new one. Cached for half its life per (session, host, level), so
        signing is rare on the hot path."""
        signer = self.signer(runtime)
        key = (session.sid, session.sub, host, session.level)
        hit = self.assertions.get(key)
        if hit is not None and hit[1] > now:
            return hit
        claims: dict[str, object] = {"sub": session.sub, "level": session.level,
                                     "auth_time": int(session.auth_time), "src": session.source}
        if session.email:
            claims["email"] = session.email
        if session.name:
            claims["name"] = session.name
        if session.groups:
            claims["groups"] = list(session.groups)
        try:
            value = signer.sign(claims, audience=host, lifetime=min(life, max(1.0, session.exp - now)), now=now)
        except JwtError as exc:
            log.warning("identity assertion not added: %s", exc)
            return None
        self.assertions[key] = hit = (value, now + life / 2)
        return hit
