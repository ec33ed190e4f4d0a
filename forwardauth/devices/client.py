"""The device client: `forwardauth device pair|watch|forget`.

It speaks the HTTP API of the devices part:
  POST   /api/v1/device/pair               {"code", "name"} -> 201 {"device", "credential"}
  GET    /api/v1/device/requests           Bearer, If-None-Match -> 200 + ETag + {"requests"}, or 304
  POST   /api/v1/device/requests/{id}      Bearer, {"decision", "phrase"} -> 200 {"id", "state", "reason"}
  DELETE /api/v1/device                    Bearer -> 204 (forget: the device removes itself)

Watching is the seed's loop: one kept connection (a connector with one
slot), each poll sends the last ETag, a 304 is the server saying "nothing
new, still here" and the next poll goes out at once on the same connection.
On errors it backs off exponentially with jitter (1 s doubling to 60 s, each
wait between half and all of that), honours Retry-After when the server
gives one, and never sends more than `BURST` polls in `BURST_PERIOD`
whatever the server answers, so a misbehaving server or proxy answering at
once forever is not hammered either.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import os
import random
import stat
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwardauth.core import jsonstrict
from forwardauth.devices.credentials import normalise_code

BASE_DELAY = 1.0
MAX_DELAY = 60.0
MAX_RETRY_AFTER = 3600.0
BURST = 10
BURST_PERIOD = 10.0
READ_TIMEOUT = 120.0  # longer than any sane poll_timeout (the server's default is 50 s)


class ClientError(Exception):
    """A problem to print as one line (exit status 2)."""


# --- the credential file ------------------------------------------------------------

def default_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "forwardauth" / "device.json"


@dataclass(frozen=True)
class Saved:
    url: str  # the server's base URL, https://auth.example.com
    device_id: str
    name: str
    credential: str


def save(path: Path, saved: Saved) -> None:
    """Written 0600 from the start (never readable by others, not even for a
    moment), in a 0700 directory, replacing any older file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(saved.__dict__, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> Saved:
    """The saved credential; refused when others could read it (like ssh does
    with a private key), since anyone who reads it can approve sign-ins."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ClientError(f"{path}: no device credential here (pair first: forwardauth device pair URL CODE)") from None
    except OSError as exc:
        raise ClientError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClientError(f"{path}: must be readable by its owner only (chmod 600 {path})")
        try:
            data = json.load(f)
            return Saved(str(data["url"]), str(data["device_id"]), str(data["name"]), str(data["credential"]))
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"{path}: not a device credential file") from None


# --- URLs ---------------------------------------------------------------------------

def server_url(url: str) -> tuple[str, str | None]:
    """(base URL, pairing code from the URL's fragment if any). Plain http
    only to a loopback address: the credential must not travel in clear."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ClientError(f"not a server URL: {url!r} (e.g. https://auth.example.com)")
    if u.scheme == "http" and not _loopback(u.hostname):
        raise ClientError("use https: the device credential would travel in clear over http")
    code = urllib.parse.parse_qs(u.fragment).get("code", [None])[0]
    return f"{u.scheme}://{u.netloc}", code


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_ANSWER = 256 * 1024  # bytes of one answer of the server's (a page of waiting requests is a few KB)


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    """The answer's body as JSON that reads one way only (core.jsonstrict), read up to MAX_ANSWER
    bytes: a server or a proxy in between that sends more, or anything else, is a ValueError."""
    body = bytearray()
    while chunk := await resp.content.read(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER:
            raise ValueError(f"answer over {MAX_ANSWER // 1024} KB")
    return jsonstrict.loads(bytes(body))


async def _error_of(resp: aiohttp.ClientResponse) -> str:
    """The server's `error_description` (its JSON error), else the status line."""
    try:
        body = await read_json(resp)
        if isinstance(body, dict) and isinstance(body.get("error_description"), str):
            return body["error_description"][:300]
    except (ValueError, aiohttp.ClientError):
        pass
    return f"HTTP {resp.status} {resp.reason or ''}".strip()


# --- pair and forget ------------------------------------------------------------------

async def pair(url: str, code: str | None, name: str, path: Path) -> Saved:
    base, from_url = server_url(url)
    text = code or from_url
    if not text:
        raise ClientError("no pairing code: give CODE, or the pairing URL the devices page shows")
    if normalise_code(text) is None:
        raise ClientError("that is not a pairing code (16 letters and digits, e.g. ABCD-EFGH-JKLM-NPQR)")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            async with http.post(f"{base}/api/v1/device/pair", json={"code": text, "name": name}) as resp:
                if resp.status != 201:
                    raise ClientError(f"pairing refused: {await _error_of(resp)}")
                try:
                    body = await read_json(resp)
                except ValueError:
                    raise ClientError("the server's answer is not a pairing") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"cannot reach {base}: {type(exc).__name__}") from None
    try:
        saved = Saved(base, str(body["device"]["id"]), str(body["device"]["name"]), str(body["credential"]))
    except (KeyError, TypeError, IndexError):
        raise ClientError("the server's answer is not a pairing") from None
    save(path, saved)
    return saved


async def forget(path: Path) -> str:
    """Remove this device on the server (best effort) and delete the file."""
    saved = load(path)
    note = "removed on the server"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.delete(f"{saved.url}/api/v1/device",
                                   headers={"Authorization": f"Bearer {saved.credential}"}) as resp:
                if resp.status not in (204, 401):
                    note = f"not removed on the server ({await _error_of(resp)}): remove it on the devices page"
    except (TimeoutError, aiohttp.ClientError, OSError):
        note = f"{saved.url} unreachable: remove the device on its devices page"
    path.unlink()
    return note


# --- watch ------------------------------------------------------------------------------

Ask = Callable[[str], Awaitable[str]]
Say = Callable[[str], None]


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, and float() refuses it
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a day or year past C long
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER)


def answer_of(choice: str, phrases: list[str]) -> dict[str, str] | None:
    """The answer to send for what the person typed ("d", or a phrase's number), or None.
    ASCII digits only: "²".isdigit() is true and int() refuses it."""
    if choice == "d":
        return {"decision": "deny"}
    if choice.isascii() and choice.isdigit() and 1 <= int(choice) <= len(phrases):
        return {"decision": "approve", "phrase": phrases[int(choice) - 1]}
    return None


class Backoff:
    """Exponential with jitter: the n-th consecutive failure waits between half
    and all of min(MAX, BASE * 2**(n-1)); never zero, so never a tight loop."""

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.failures = 0
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def next(self, at_least: float | None = None) -> float:
        self.failures += 1
        d = min(self.cap, self.base * 2 ** (self.failures - 1))
        return max(d / 2 + self.rng.uniform(0, d / 2), at_least or 0.0)

    def reset(self) -> None:
        self.failures = 0


class Watcher:
    """The long-poll loop of one device."""

    def __init__(self, saved: Saved, ask: Ask, say: Say, *, backoff: Backoff | None = None,
                 read_timeout: float = READ_TIMEOUT, burst: int = BURST, burst_period: float = BURST_PERIOD) -> None:
        self.saved = saved
        self.ask = ask
        self.say = say
        self.backoff = backoff or Backoff()
        self.read_timeout = read_timeout
        self.burst, self.burst_period = burst, burst_period
        self.etag: str | None = None
        self.asked: set[str] = set()  # request ids already put to the user
        self.polls = 0  # requests sent (tests and the "never hammers" check read these)
        self.errors = 0
        self._sent: list[float] = []

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.saved.credential}"}

    async def run(self, once: bool = False) -> int:
        """Until cancelled; with `once`, until one request is answered: 0 when
        it was approved, 1 otherwise. 2 when the credential is refused."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=self.read_timeout)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            while True:
                await self._pace()
                outcome = await self._poll(http, once)
                if outcome is not None:
                    return outcome

    async def _pace(self) -> None:
        now = time.monotonic()
        self._sent = [t for t in self._sent if now - t < self.burst_period]
        if len(self._sent) >= self.burst:
            await asyncio.sleep(self.burst_period - (now - self._sent[0]))
        self._sent.append(time.monotonic())

    async def _wait(self, seconds: float, why: str) -> None:
        self.say(f"{why}; trying again in {seconds:.0f}s" if seconds >= 1 else f"{why}; trying again")
        await asyncio.sleep(seconds)

    async def _poll(self, http: aiohttp.ClientSession, once: bool) -> int | None:
        headers = dict(self._auth)
        if self.etag:
            headers["If-None-Match"] = self.etag
        self.polls += 1
        try:
            async with http.get(f"{self.saved.url}/api/v1/device/requests", headers=headers) as resp:
                if resp.status == 200:
                    body = await read_json(resp)  # ValueError: backed off below, like an error answer
                    requests = body.get("requests") if isinstance(body, dict) else None
                    if not isinstance(requests, list):
                        raise ValueError("not a list of requests")
                    self.etag = resp.headers.get("ETag")
                    self.backoff.reset()
                    return await self._show(http, requests, once)
                await resp.read()  # so the connection goes back to the pool
                if resp.status == 304:
                    self.backoff.reset()
                    self.etag = resp.headers.get("ETag", self.etag)
                    return None
                if resp.status == 401:
                    self.say("this device's credential is no longer accepted (removed, or the account was locked): "
                             "pair it again")
                    return 2
                self.errors += 1
                hint = retry_after(resp.headers.get("Retry-After"), time.time())
                await self._wait(self.backoff.next(hint), f"server answered HTTP {resp.status}")
        except ValueError as exc:  # an answer that is not one: too large, not JSON, not a list of requests
            self.errors += 1
            await self._wait(self.backoff.next(), f"the server's answer was refused ({exc})")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.errors += 1
            await self._wait(self.backoff.next(), f"{self.saved.url} unreachable ({type(exc).__name__})")
        return None

    async def _show(self, http: aiohttp.ClientSession, requests: list[Any], once: bool) -> int | None:
        self.asked &= {str(r.get("id")) for r in requests if isinstance(r, dict)}  # forget the ones gone
        for r in requests:
            if not isinstance(r, dict) or r.get("id") in self.asked:
                continue
            self.asked.add(str(r.get("id")))
            result = await self._handle(http, r)
            if once and result is not None:
                return result
        return None

    async def _handle(self, http: aiohttp.ClientSession, r: dict[str, Any]) -> int | None:
        phrases = [str(p) for p in r.get("phrases", [])][:3]
        try:
            left = max(0, min(86_400, int(float(r.get("expires", 0)) - time.time())))
        except (TypeError, ValueError, OverflowError):  # not a time: shown as expired, still answerable
            left = 0
        lines = [f"Sign-in waiting for approval: {r.get('host')}{r.get('path')} (level {r.get('level')})",
                 f"  from {r.get('client') or 'an unknown address'}, {r.get('user_agent') or 'unknown browser'}; "
                 f"expires in {left}s"]
        lines += [f"  {i}) {p}" for i, p in enumerate(phrases, 1)]
        self.say("\n".join(lines))
        choice = (await self.ask(f"Which phrase does the browser show? [1-{len(phrases)}, d = deny, "
                                 f"Enter = not now]: ")).strip().lower()
        if not choice:
            return None
        body = answer_of(choice, phrases)
        if body is None:
            self.say("not one of the choices: left waiting (it expires by itself)")
            return None
        try:
            async with http.post(f"{self.saved.url}/api/v1/device/requests/{r.get('id')}", json=body,
                                 headers=self._auth) as resp:
                if resp.status != 200:
                    self.say(f"not recorded: {await _error_of(resp)}")
                    return 1
                result = await read_json(resp)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.say(f"not recorded: {self.saved.url} unreachable ({type(exc).__name__})")
            return 1
        if not isinstance(result, dict):
            self.say("not recorded: the server's answer is not a decision")
            return 1
        if result.get("state") == "approved":
            self.say("approved")
            return 0
        if result.get("reason") == "wrong_phrase":
            self.say("denied: that is not the phrase the browser showed. If you did not start this sign-in, "
                     "someone else did: change your password.")
        else:
            self.say("denied")
        return 1
