"""The operations of device approval, over the store, the hub, regulation and
the audit log. No aiohttp: the routes turn HTTP into these calls and a
`Refusal` into its answer (status, error code, message, Retry-After).

Who may do what is the routes' business (a signed-in user at the pairing
level for `new_pairing_code`, a browser holding the request's flow for
`outcome`/`cancel`, an administrator for `remove_device` of another user);
this module keeps the rules that hold whoever calls.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from forwardauth.devices import approvals, credentials
from forwardauth.devices.approvals import Verdict
from forwardauth.devices.hub import Connection, Hub, run_poll
from forwardauth.devices.longpoll import Reply, Snapshot
from forwardauth.devices.settings import DevicesSettings
from forwardauth.services.regulation import Regulator, client_key, user_key
from forwardauth.state.base import ClaimStore, DeviceStore, FailureStore
from forwardauth.state.records import ApprovalRequest, ApprovalState, Device, Pairing

# The audit events this part writes (services.audit.EVENTS lists them too).
AUDIT_EVENTS = (
    "device_paired",
    "device_pair_failed",  # wrong, expired or used pairing code
    "device_removed",
    "approval_requested",
    "approval_approved",
    "approval_denied",  # denied on the device
    "approval_wrong_phrase",  # the device picked a phrase the browser did not show: denied
    "approval_expired",
    "approval_cancelled",  # by the browser that asked
)


class Audit(Protocol):
    """audit.AuditLog.emit's shape. There is no field for a phrase, a code or
    a credential, and this module never formats one into `reason`."""

    def __call__(self, event: str, *, user: str | None = ..., client: str | None = ..., host: str | None = ...,
                 path: str | None = ..., level: str | None = ..., reason: str | None = ...) -> Any: ...


class Store(DeviceStore, FailureStore, ClaimStore, Protocol):
    """What the service needs of the state store (every StateStore has it)."""


class Refusal(Exception):
    """An answer other than success, for the routes to write as it is.
    (A new one per raise: a shared instance would grow its traceback.)"""

    def __init__(self, status: int, error: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, error, message)
        self.status = status
        self.error = error  # machine-readable, the JSON `error`
        self.message = message  # for people; never contains a secret
        self.retry_after = retry_after


def invalid_token() -> Refusal:
    return Refusal(401, "invalid_token", "the device credential is not valid (removed, or never paired)")


def invalid_code() -> Refusal:
    return Refusal(403, "invalid_code", "the pairing code is not valid: wrong, expired or used already")


def not_found(what: str = "request") -> Refusal:
    return Refusal(404, "not_found", f"no such {what}")

TOUCH_EVERY = 60.0  # last_seen is written at most this often per device
POLL_JITTER = 0.1  # a poll waits between 90% and 100% of poll_timeout


class DeviceService:
    def __init__(self, settings: DevicesSettings, store: Store, hub: Hub, regulator: Regulator, audit: Audit,
                 valid: Callable[[Device, float], bool] = lambda d, now: True,
                 clock: Callable[[], float] = time.time) -> None:
        """`valid` says whether a stored device may still act (its account is
        active and its user's epoch, from `session revoke` or a lock, is older
        than the device); the wiring gives it from the revocation snapshot."""
        self.settings = settings
        self.store = store
        self.hub = hub
        self.regulator = regulator
        self.audit = audit
        self.valid = valid
        self.clock = clock

    # --- pairing -------------------------------------------------------------------
    async def new_pairing_code(self, user: str) -> tuple[str, Pairing]:
        """A one-time code for the devices page (and its QR code)."""
        if len(await self.store.devices(user)) >= self.settings.max_devices:
            raise self._too_many_devices()
        now = self.clock()
        code = credentials.new_pairing_code()
        pairing = Pairing(user, now, now + self.settings.pairing_ttl)
        await self.store.put_pairing(credentials.code_hash(code), pairing)
        return code, pairing

    async def pair(self, body: Any, client: str | None) -> tuple[Device, str]:
        """Exchange a pairing code for a device and its credential (returned
        once, here, and never again). Wrong codes are counted per client
        address, `limits.requests_per_client` per window."""
        read = approvals.read_pairing(body)
        if isinstance(read, str):
            raise Refusal(400, "invalid_request", read)
        code_text, name = read
        now = self.clock()
        key = self._pair_failures_key(client)
        lim = self.settings.limits
        if key is not None:
            count, latest = await self.store.failures(key, now, lim.window)
            if count >= lim.requests_per_client:
                raise Refusal(429, "too_many_attempts", "too many wrong pairing codes from this address",
                              self._retry(latest, now))
        code = credentials.normalise_code(code_text)
        h = credentials.code_hash(code) if code else None
        pairing = await self.store.pairing(h, now) if h else None
        if h is None or pairing is None or not await self.store.claim_once(
                "device-pair:" + h, pairing.expires - now + 60, now):
            if key is not None:
                await self.store.record_failure(key, now, lim.window)
            self.audit("device_pair_failed", client=client)
            raise invalid_code()
        await self.store.drop_pairing(h)
        cred = credentials.new_credential()
        device = Device(cred.device_id, pairing.user, name, now, cred.secret_hash)
        if not await self.store.add_device(device, self.settings.max_devices):
            raise self._too_many_devices()
        self.hub.wake(device.user)
        self.audit("device_paired", user=device.user, client=client, reason=f"device {device.id}")
        return device, cred.token

    def _too_many_devices(self) -> Refusal:
        return Refusal(409, "too_many_devices",
                       f"this account has {self.settings.max_devices} devices already: remove one first")

    @staticmethod
    def _pair_failures_key(client: str | None) -> str | None:
        ck = client_key(client)
        return "devices:pair:" + ck if ck else None

    def _retry(self, latest: float | None, now: float) -> float:
        """Until the latest counted attempt leaves the window: an upper bound
        (the oldest one may leave sooner), never a promise too early."""
        window = self.settings.limits.window
        return max(1.0, (latest + window - now) if latest is not None else window)

    # --- the device's side ------------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> Device:
        presented = credentials.from_authorization(authorization)
        if presented is None:
            raise invalid_token()
        device = await self.store.device(presented.device_id)
        if device is None or not presented.matches(device.secret_hash):
            raise invalid_token()
        now = self.clock()
        if not self.valid(device, now):
            raise invalid_token()
        if device.last_seen is None or now - device.last_seen >= TOUCH_EVERY:
            await self.store.touch_device(device.id, now)
        return device

    def poll(self, device: Device, if_none_match: str | None, conn: Connection) -> Awaitable[Reply | None]:
        """The long-poll (see longpoll.py): the reply to write, or None when
        the client has gone. Raises hub.Busy when the user has
        `limits.polls_per_user` polls waiting here (see `busy`). A plain
        function returning the driver's coroutine: one coroutine fewer kept
        alive per waiting poll."""
        # Each poll waits a little less than poll_timeout, at random: devices
        # that reconnected together (a restart, a network blip) would
        # otherwise time out and re-poll together, every time.
        timeout = self.settings.poll_timeout * (1 - POLL_JITTER * random.random())  # noqa: S311 - not a secret
        return run_poll(self.hub, device.user, device.id, conn, if_none_match, timeout,
                        self.snapshot, device.id, device.user, clock=self.clock)

    @staticmethod
    def busy() -> Refusal:
        return Refusal(429, "too_many_polls", "too many polls waiting for this account", 5.0)

    async def snapshot(self, device_id: str, user: str) -> Snapshot:
        now = self.clock()
        device = await self.store.device(device_id)
        ok = device is not None and self.valid(device, now)
        requests = await self.store.pending(user, now)
        for r in requests:
            if not r.live(now):
                await self._expire(r.id, now)
        return Snapshot(ok, tuple(requests))

    async def answer(self, device: Device, request_id: str, body: Any) -> ApprovalRequest:
        """A device's decision on a request of its user."""
        ans = approvals.read_answer(body)
        if isinstance(ans, str):
            raise Refusal(400, "invalid_request", ans)
        if not approvals.valid_request_id(request_id):
            raise not_found()
        req = await self.store.request(request_id)
        if req is None or req.user != device.user:
            raise not_found()
        now = self.clock()
        verdict = approvals.judge(req, ans, now)
        if verdict is Verdict.NOT_PENDING:
            if req.outcome(now) is ApprovalState.EXPIRED:
                await self._expire(req.id, now)
            raise self._not_pending(req.outcome(now))
        state, reason = approvals.resolution(verdict)
        done = await self.store.resolve(req.id, state, reason, now, device.id)
        if done is None:  # decided by another device, or cancelled, meanwhile
            latest = await self.store.request(req.id)
            raise self._not_pending(latest.outcome(now) if latest else ApprovalState.EXPIRED)
        self.hub.wake(req.user)
        where = {"user": req.user, "client": req.client, "host": req.host, "path": req.path, "level": req.level}
        if verdict is Verdict.APPROVED:
            self.audit("approval_approved", **where, reason=f"device {device.id}")
        elif verdict is Verdict.DENIED:
            self.audit("approval_denied", **where, reason=f"device {device.id}")
        else:
            self.audit("approval_wrong_phrase", **where, reason=f"device {device.id}")
            # Counted against the user and the address of the browser that
            # asked: a stranger starting requests gets banned, and so does a
            # user tapping at random.
            await self.regulator.failed(req.user, req.client, now)
        return done

    @staticmethod
    def _not_pending(state: ApprovalState) -> Refusal:
        return Refusal(409, "not_pending", f"the request is {state.value} already")

    # --- the browser's side -------------------------------------------------------------
    async def request_approval(self, user: str, host: str, path: str, client: str | None,
                               user_agent: str | None) -> ApprovalRequest:
        """A new request for `user`'s devices; the browser shows `.phrase`.

        It is created whether or not the user has a device (nobody then sees
        it and it expires): the passwordless sign-in page must not tell a
        stranger which accounts have one. Pages that know the user (step-up)
        ask `has_devices` before offering it."""
        now = self.clock()
        verdict = await self.regulator.check(user, client, now)
        if verdict.banned:
            raise Refusal(429, "banned", "too many failed attempts: try again later", verdict.retry_after)
        lim = self.settings.limits
        counters = [("devices:req:" + user_key(user), lim.requests_per_user, "for this account")]
        if (ck := client_key(client)) is not None:
            counters.append(("devices:req:" + ck, lim.requests_per_client, "from this address"))
        for key, limit, whose in counters:
            # Counted before the check (like regulation), so parallel requests
            # cannot all slip under the limit; refused attempts count too.
            if await self.store.record_failure(key, now, lim.window) > limit:
                _, latest = await self.store.failures(key, now, lim.window)
                raise Refusal(429, "too_many_requests", f"too many approval requests {whose}: try again later",
                              self._retry(latest, now))
        req = approvals.new_request(user, host, path, client, user_agent, self.settings.level, now,
                                    self.settings.request_ttl)
        if await self.store.create_request(req, now) is None:
            raise Refusal(409, "pending", "an approval request for this account is waiting already: "
                                          "answer or deny it on the device, or wait until it expires")
        self.hub.wake(user)
        self.audit("approval_requested", user=user, client=client, host=req.host, path=req.path, level=req.level)
        return req

    async def outcome(self, request_id: str) -> ApprovalRequest | None:
        """The request as its browser should see it (an expired one says so)."""
        req = await self.store.request(request_id) if approvals.valid_request_id(request_id) else None
        if req is None:
            return None
        now = self.clock()
        if req.outcome(now) is ApprovalState.EXPIRED and req.state is ApprovalState.PENDING:
            return await self._expire(req.id, now) or await self.store.request(request_id)
        return req

    async def cancel(self, request_id: str) -> ApprovalRequest | None:
        now = self.clock()
        done = await self.store.resolve(request_id, ApprovalState.CANCELLED, "cancelled_in_browser", now)
        if done is not None:
            self.hub.wake(done.user)
            self.audit("approval_cancelled", user=done.user, client=done.client, host=done.host, path=done.path,
                       level=done.level)
        return done

    async def _expire(self, request_id: str, now: float) -> ApprovalRequest | None:
        done = await self.store.expire_request(request_id, now)
        if done is not None:  # exactly one caller gets here per request
            self.audit("approval_expired", user=done.user, client=done.client, host=done.host, path=done.path,
                       level=done.level)
        return done

    # --- managing devices (the user's page, the admin API, the CLI) ----------------------
    async def has_devices(self, user: str) -> bool:
        return bool(await self.store.devices(user))

    async def devices(self, user: str) -> list[Device]:
        return await self.store.devices(user)

    async def remove_device(self, device_id: str, user: str | None, by: str, client: str | None = None) -> Device:
        """Remove a device; `user` given: only if it is that user's (a user's
        own page), None: any (an administrator). Its polls end with 401."""
        device = await self.store.device(device_id) if credentials.valid_device_id(device_id) else None
        if device is None or (user is not None and device.user != user):
            raise not_found("device")
        removed = await self.store.remove_device(device_id)
        if removed is None:
            raise not_found("device")
        self.hub.wake(removed.user)
        self.audit("device_removed", user=removed.user, client=client, reason=f"device {removed.id} by {by}")
        return removed

