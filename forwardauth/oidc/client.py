"""Talking to the provider: discovery, JWKS, code exchange, userinfo.

Only the sign-in endpoints use this; the decision endpoints never do, so a
provider outage leaves existing sessions working. Discovery and keys are
cached (an hour); a token signed with an unknown `kid` triggers at most one
JWKS refetch per `jwks_min_interval` (the provider rotated its keys).
Concurrent fetches of the same document share one request. Whether the
provider is up is judged from its recent answers (see `metadata_for_login`),
so a login start costs a provider request at most every few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.errors import InvalidPayloadError, JoseError
from joserfc.jwk import KeySet

from forwardauth.core import jsonstrict
from forwardauth.oidc.flow import LoginError
from forwardauth.oidc.settings import OidcConfig
from forwardauth.web.bodies import BodyError, read_stream

DISCOVERY_TTL = 3600.0  # discovery document kept this long
KEYS_TTL = 3600.0  # signing keys kept this long, then fetched again at the next sign-in
JWKS_MIN_INTERVAL = 30.0  # at most one refetch for an unknown kid in this long
HEALTH_TTL = 10.0  # a provider that answered within this long is taken to be up
DOWN_TTL = 5.0  # a failed request is remembered this long: starts answer at once
MAX_DOCUMENT = 256 * 1024
MAX_DOCUMENT_DEPTH = 32  # a JWKS or a discovery document nests 3 levels deep
MAX_CLAIMS_DEPTH = 16


class ProviderDown(Exception):
    """The provider could not be reached or answered nonsense. Message is safe to show."""


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None


class ProviderClient:
    """One per process. The timings are attributes so tests can shorten them."""

    def __init__(self, cfg: OidcConfig):
        self.cfg = cfg
        self.discovery_ttl = DISCOVERY_TTL
        self.keys_ttl = KEYS_TTL
        self.jwks_min_interval = JWKS_MIN_INTERVAL
        self.health_ttl = HEALTH_TTL
        self.down_ttl = DOWN_TTL
        self._session: aiohttp.ClientSession | None = None
        self._meta: Metadata | None = None
        self._meta_at = -math.inf
        self._keys: KeySet | None = None
        self._keys_at = -math.inf
        self._ok_at = -math.inf  # last answer from the provider
        self._down_at = -math.inf  # last failure to get one
        self._down_reason = ""
        # One fetch in flight per document: concurrent callers share it
        # (nobody waits behind someone else's timeout).
        self._inflight: dict[str, asyncio.Future] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.http_timeout),
                headers={"User-Agent": "forwardauth"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _answered(self) -> None:
        self._ok_at = time.monotonic()

    def _failed(self, reason: str) -> ProviderDown:
        self._down_at, self._down_reason = time.monotonic(), reason
        return ProviderDown(reason)

    async def _get_json(self, url: str, **kw: Any) -> dict:
        try:
            async with self._http().get(url, **kw) as r:
                if r.status >= 500:
                    raise self._failed(f"provider answered {r.status} for {url}")
                if r.status != 200:  # it is up: this request was refused (e.g. userinfo's 401)
                    raise ProviderDown(f"provider answered {r.status} for {url}")
                body = await _read(r, url)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(f"cannot reach the provider ({exc.__class__.__name__})") from None
        except _TooLarge as exc:
            raise self._failed(str(exc)) from None
        try:
            d = _json_object(body, url)
        except ProviderDown as exc:
            raise self._failed(str(exc)) from None
        self._answered()
        return d

    async def _shared(self, what: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        fut = self._inflight.get(what)
        if fut is None or fut.done():
            fut = asyncio.ensure_future(fetch())
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
            self._inflight[what] = fut
        # shield: a caller that gives up (client went away) does not cancel the others' fetch.
        return await asyncio.shield(fut)

    async def metadata(self) -> Metadata:
        """The discovery document, cached for `discovery_ttl`."""
        if self._meta is not None and time.monotonic() - self._meta_at < self.discovery_ttl:
            return self._meta
        return await self._shared("discovery", self._fetch_metadata)

    async def metadata_for_login(self) -> Metadata:
        """Metadata for a new login, when the provider looks up.

        A provider that answered within `health_ttl` is taken to be up (cached
        document); else one shared discovery fetch checks (and refreshes). A
        failure within `down_ttl` answers at once: a burst of starts while the
        provider is down costs one timeout, not one each.
        """
        now = time.monotonic()
        if self._down_at > self._ok_at and now - self._down_at < self.down_ttl:
            raise ProviderDown(self._down_reason)
        if self._meta is not None and now - self._ok_at < self.health_ttl \
                and now - self._meta_at < self.discovery_ttl:
            return self._meta
        return await self._shared("discovery", self._fetch_metadata)

    async def _fetch_metadata(self) -> Metadata:
        url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        d = await self._get_json(url)
        if d.get("issuer") != self.cfg.issuer:
            raise self._failed("discovery document names a different issuer")
        try:
            meta = Metadata(
                issuer=d["issuer"],
                authorization_endpoint=_url(d["authorization_endpoint"]),
                token_endpoint=_url(d["token_endpoint"]),
                jwks_uri=_url(d["jwks_uri"]),
                userinfo_endpoint=_url(d["userinfo_endpoint"]) if d.get("userinfo_endpoint") else None,
                end_session_endpoint=_url(d["end_session_endpoint"]) if d.get("end_session_endpoint") else None,
            )
        except (KeyError, ValueError):
            raise self._failed("discovery document is incomplete") from None
        self._meta, self._meta_at = meta, time.monotonic()
        return meta

    async def _key_set(self, refresh: bool) -> KeySet:
        """The provider's signing keys: cached for `keys_ttl`; `refresh` (unknown kid) refetches
        at most once per `jwks_min_interval`, and concurrent refetches share one request."""
        age = time.monotonic() - self._keys_at
        if self._keys is not None and age < (self.jwks_min_interval if refresh else self.keys_ttl):
            return self._keys
        return await self._shared("jwks", self._fetch_keys)

    async def _fetch_keys(self) -> KeySet:
        meta = await self.metadata()
        d = await self._get_json(meta.jwks_uri)
        try:
            keys = KeySet.import_key_set({"keys": [k for k in d.get("keys", []) if k.get("use", "sig") == "sig"]})
        except (JoseError, ValueError, TypeError, AttributeError):
            raise self._failed("provider JWKS is invalid") from None
        self._keys, self._keys_at = keys, time.monotonic()
        return keys

    async def verify_id_token(self, id_token: str) -> dict:
        """Signature (algorithm allow-list, key from JWKS), and claims that read one way only
        (no key twice: `"sub":"alice", ..., "sub":"admin"` is refused, not read as admin);
        the claims' values are checked by flow."""
        if not isinstance(id_token, str) or len(id_token) > 16384:
            raise LoginError(401, "ID token missing or oversized")
        header = id_token_header(id_token)
        keys = await self._key_set(refresh=False)
        kid = header.get("kid")
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            keys = await self._key_set(refresh=True)  # the provider may have rotated
        try:
            claims = jwt.decode(id_token, keys, algorithms=list(self.cfg.id_token_algorithms),
                                decoder_cls=jsonstrict.StrictDecoder).claims
        except InvalidPayloadError as exc:
            why = exc.__cause__ if isinstance(exc.__cause__, jsonstrict.JsonError) else "not a JSON object"
            raise LoginError(401, f"ID token claims refused ({why})") from None
        except JoseError as exc:
            raise LoginError(401, f"ID token signature refused ({exc.error})") from None
        except (ValueError, TypeError, RecursionError):
            raise LoginError(401, "ID token is malformed") from None
        if jsonstrict.depth(claims, MAX_CLAIMS_DEPTH) > MAX_CLAIMS_DEPTH:
            raise LoginError(401, f"ID token claims refused (nested deeper than {MAX_CLAIMS_DEPTH} levels)")
        return claims

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict:
        meta = await self.metadata()
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        basic = base64.b64encode(f"{_form(self.cfg.client_id)}:{_form(self.cfg.client_secret)}".encode()).decode()
        try:
            async with self._http().post(meta.token_endpoint, data=data,
                                         headers={"Accept": "application/json",
                                                  "Authorization": f"Basic {basic}"}) as r:
                body = await _read(r, "token endpoint")
                status = r.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(f"cannot reach the provider ({exc.__class__.__name__})") from None
        except _TooLarge as exc:
            raise ProviderDown(str(exc)) from None
        d = _json_object(body, "token endpoint")
        self._answered()
        if status != 200:
            given = d.get("error")
            err = given if isinstance(given, str) else "error"
            raise LoginError(400, f"the provider refused the authorization code ({err[:64]})")
        if not isinstance(d.get("id_token"), str):
            raise LoginError(502, "the provider sent no ID token")
        return d

    async def userinfo(self, access_token: str) -> dict:
        meta = await self.metadata()
        if not meta.userinfo_endpoint:
            return {}
        return await self._get_json(meta.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"})


def _form(v: str) -> str:
    from urllib.parse import quote

    return quote(v, safe="")  # RFC 6749 2.3.1: form-encode before Basic


def _url(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith(("https://", "http://")):
        raise ValueError("bad URL")
    return v


class _TooLarge(Exception):
    pass


async def _read(r: aiohttp.ClientResponse, what: str) -> bytes:
    """The whole answer, at most MAX_DOCUMENT bytes, in however many pieces it arrives
    (`content.read(n)` alone returns only what has arrived: a token response in two TCP
    packets was read half and refused as "not JSON"). The session's timeout bounds the time."""
    if r.content_length is not None and r.content_length > MAX_DOCUMENT:
        raise _TooLarge(f"{what}: answer too large")
    try:
        return await read_stream(r.content, MAX_DOCUMENT)
    except BodyError:
        raise _TooLarge(f"{what}: answer too large") from None


def _json_object(body: bytes, what: str) -> dict:
    """One JSON object that reads one way only (jsonstrict: no key twice, bounded nesting)."""
    if len(body) > MAX_DOCUMENT:
        raise ProviderDown(f"{what}: answer too large")
    try:
        d = jsonstrict.loads(body, MAX_DOCUMENT_DEPTH)
    except jsonstrict.JsonError as exc:
        if str(exc) == jsonstrict.NOT_JSON:
            raise ProviderDown(f"{what}: answer is not JSON") from None
        raise ProviderDown(f"{what}: answer refused ({exc})") from None
    if not isinstance(d, dict):
        raise ProviderDown(f"{what}: answer is not a JSON object")
    return d


def id_token_header(id_token: str) -> dict:
    """The JOSE header of a compact ID token, read strictly (no key twice, shallow), or LoginError."""
    head = id_token.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        header = jsonstrict.loads(raw, 4)
    except (ValueError, jsonstrict.JsonError):  # binascii.Error is a ValueError
        raise LoginError(401, "ID token is malformed") from None
    if not isinstance(header, dict) or id_token.count(".") != 2:
        raise LoginError(401, "ID token is malformed")
    return header
