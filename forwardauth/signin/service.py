"""The checking behind the pages: passwords, TOTP codes, enrolment, sessions.

No HTTP here: every method takes plain values and returns an `Attempt`
whose `reason` is what the audit line says. What the person sees is decided
by the pages, and is deliberately coarser (an unknown user and a wrong
password read the same).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from forwardauth.core.levels import Level
from forwardauth.core.runtime import Runtime
from forwardauth.core.sealing import SealError
from forwardauth.core.session import Session, new_session_id
from forwardauth.services.account_names import USERNAME_RE, account_store
from forwardauth.services.passwords import (
    dummy_verify,
    generate_password,
    hash_password,
    needs_rehash,
    verify_password,
)
from forwardauth.services.regulation import Regulator, failure_store
from forwardauth.signin.flow import can_step_up
from forwardauth.signin.settings import LocalSettings, settings, totp_levels
from forwardauth.signin.totp import SecretBox, match_step, new_secret, normalise_code, provisioning_uri, qr_svg
from forwardauth.state.base import AccountStore, StateStore
from forwardauth.state.records import Account

log = logging.getLogger("forwardauth.signin")

# scrypt is CPU and memory heavy (32 MiB each at the default cost): run it off
# the event loop, a few at a time, so the decision endpoints stay fast.
_HASHING = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="scrypt")


ENROL_CLAIM = 60.0  # seconds a set-up may hold its claim (see LocalAuth._claim_enrolment)


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_HASHING, fn, *args)


@dataclass(frozen=True)
class Attempt:
    ok: bool
    reason: str  # ok | wrong_password | unknown_user | system_account | no_password | locked | banned |
    #              malformed_code | wrong_code | replayed | no_totp | already_enrolled | enrolment_expired |
    #              enrolment_busy | secret_unreadable
    account: Account | None = None
    retry_after: float = 0.0  # while banned: seconds left
    ban_started: bool = False  # this failure reached a limit: refused from now on

    @property
    def refused(self) -> bool:
        """Answered with "too many attempts": banned before, or by this very failure."""
        return self.reason == "banned" or self.ban_started


def account_key(session: Session) -> str:
    """The account that holds a session's local factors.

    Local sessions use the username itself; sessions from elsewhere (an
    upstream provider, the CLI) get "<source>:<sub>", so an upstream identity
    can never pick up, or overwrite, the factors of a local account that
    happens to share its name.
    """
    return session.sub if session.source == "local" else f"{session.source}:{session.sub}"


@dataclass(frozen=True)
class Enrolment:
    secret: str
    pending: str  # sealed, for the form
    uri: str
    svg: str


class LocalAuth:
    """Built once per runtime (and rebuilt on reload) by the routes."""

    def __init__(self, runtime: Runtime, store: StateStore):
        self.runtime = runtime
        self.settings: LocalSettings = settings(runtime.config)
        self.levels = runtime.config.levels
        self.accounts: AccountStore = account_store(store)
        self.regulator = Regulator(failure_store(store), self.settings.regulation)
        self.box = SecretBox(runtime.keyring)

    # --- levels ------------------------------------------------------------

    @property
    def password_level(self) -> Level:
        return self.settings.password_level_of(self.levels)

    def totp_level_for(self, wanted: str) -> Level | None:
        """The level a TOTP code proves: `wanted` when TOTP proves it, else the highest TOTP level."""
        lv = self.levels.get(wanted)
        if lv is not None and lv.local_factor == "totp":
            return lv
        found = totp_levels(self.levels)
        return found[-1] if found else None

    # --- passwords -----------------------------------------------------------

    async def check_password(self, username: str, password: str, client: str | None, now: float) -> Attempt:
        """Regulation first (the attempt is counted before it is checked), then
        the same scrypt work for every username."""
        verdict, ticket = await self.regulator.reserve(username, client, now)
        account = await self.accounts.get_account(username) if USERNAME_RE.match(username) else None
        if ticket is None:
            return Attempt(False, "banned", account, verdict.retry_after)  # not even looked at
        if account is None or account.kind != "human" or account.password_hash is None:
            await _off_loop(dummy_verify, password, self.settings.scrypt)
            ok = False
            reason = ("unknown_user" if account is None else
                      "system_account" if account.kind != "human" else "no_password")
        else:
            ok = await _off_loop(verify_password, password, account.password_hash)
            reason = "wrong_password"
        if not ok:
            v = await self.regulator.failed(ticket)
            return Attempt(False, reason, account, v.retry_after, v.banned)
        assert account is not None and account.password_hash is not None
        v = await self.regulator.passed(ticket, time.time())
        if v.banned:  # a parallel attempt started a ban while this one was checked
            return Attempt(False, "banned", account, v.retry_after)
        if not account.active:
            return Attempt(False, "locked", account)
        if needs_rehash(account.password_hash, self.settings.scrypt):
            new_hash = await _off_loop(hash_password, password, self.settings.scrypt)
            account = account.changed(now, password_hash=new_hash)
            await self.accounts.put_account(account)
        return Attempt(True, "ok", account)

    # --- TOTP ------------------------------------------------------------------

    async def check_totp(self, key: str, code: str, client: str | None, now: float) -> Attempt:
        verdict = await self.regulator.check(key, client, now)
        account = await self.accounts.get_account(key)
        if verdict.banned:
            return Attempt(False, "banned", account, verdict.retry_after)
        if account is None or account.totp_secret_enc is None:
            return Attempt(False, "no_totp", account)
        if not account.active:
            return Attempt(False, "locked", account)
        if normalise_code(code) is None:
            return Attempt(False, "malformed_code", account)
        try:
            secret = self.box.open(key, account.totp_secret_enc)
        except (SealError, ValueError):
            log.error("a TOTP secret does not open with the key ring (its key was removed before `forwardauth "
                      "keys reseal`): the account needs `forwardauth users totp reset`",
                      extra={"fields": {"user": key, "key": account.totp_secret_enc.partition(".")[0]}})
            return Attempt(False, "secret_unreadable", account)
        verdict, ticket = await self.regulator.reserve(key, client, now)  # counted before the code is looked at
        if ticket is None:
            return Attempt(False, "banned", account, verdict.retry_after)
        step = match_step(secret, code, now)
        reason = "wrong_code" if step is None else "replayed"
        if step is not None and await self.accounts.claim_totp_step(key, step):
            v = await self.regulator.passed(ticket, time.time())
            if v.banned:  # the code is used up all the same: it was seen
                return Attempt(False, "banned", account, v.retry_after)
            if self.box.needs_reseal(account.totp_secret_enc):
                await self.accounts.put_account(account.changed(now, totp_secret_enc=self.box.seal(key, secret)))
            return Attempt(True, "ok", account)
        v = await self.regulator.failed(ticket)
        return Attempt(False, reason, account, v.retry_after, v.banned)

    def begin_enrolment(self, key: str, label: str, now: float, secret: str | None = None) -> Enrolment:
        """A new seed, sealed for the form, with its otpauth URI and QR code."""
        secret = secret or new_secret()
        uri = provisioning_uri(secret, label, self.settings.totp.issuer)
        return Enrolment(secret, self.box.seal_pending(key, secret, now), uri, qr_svg(uri))

    async def finish_enrolment(self, key: str, session: Session, pending: str, code: str, client: str | None,
                               now: float) -> Attempt:
        """Store the seed once a first code from it is right (that code is then used up).

        Two set-ups of one account at once (two tabs, two replicas): only one
        may store its seed. The store has no "set the secret only if none"
        operation, so the winner is decided by an atomic counter in the
        failure store ("enrol:<key>", see `_claim_enrolment`); the other
        gets `enrolment_busy`, or `already_enrolled` once the first is done.
        """
        verdict = await self.regulator.check(key, client, now)
        if verdict.banned:
            return Attempt(False, "banned", retry_after=verdict.retry_after)
        secret = self.box.open_pending(key, pending, now)
        if secret is None:
            return Attempt(False, "enrolment_expired")
        account = await self.accounts.get_account(key)
        if account is not None and account.has_totp:
            return Attempt(False, "already_enrolled", account)
        if account is not None and not account.active:
            return Attempt(False, "locked", account)
        if account is None and session.source == "local":
            return Attempt(False, "unknown_user")  # deleted while signed in
        if normalise_code(code) is None:
            return Attempt(False, "malformed_code", account)
        verdict, ticket = await self.regulator.reserve(key, client, now)
        if ticket is None:
            return Attempt(False, "banned", account, verdict.retry_after)
        step = match_step(secret, code, now)
        if step is None:
            v = await self.regulator.failed(ticket)
            return Attempt(False, "wrong_code", account, v.retry_after, v.banned)
        if not await self._claim_enrolment(key, now):
            await self.regulator.passed(ticket, time.time())  # the code was right: not a failure
            return Attempt(False, "enrolment_busy", account)
        try:
            v = await self.regulator.passed(ticket, time.time())
            if v.banned:
                return Attempt(False, "banned", account, v.retry_after)
            current = await self.accounts.get_account(key)  # again, now that this set-up holds the claim
            if current is not None and current.has_totp:
                return Attempt(False, "already_enrolled", current)
            if current is None and account is not None:
                return Attempt(False, "unknown_user")  # deleted meanwhile
            sealed = self.box.seal(key, secret)
            if current is None:
                new = Account(key, display_name=session.name, email=session.email, created=now, updated=now,
                              totp_secret_enc=sealed, totp_last_step=step)
                if not await self.accounts.add_account(new):  # atomic: insert only
                    return Attempt(False, "enrolment_busy")
            else:
                new = current.changed(now, totp_secret_enc=sealed, totp_last_step=step)
                await self.accounts.put_account(new)
            stored = await self.accounts.get_account(key)
            if stored is None or stored.totp_secret_enc != sealed:
                return Attempt(False, "enrolment_busy", stored)  # lost to a writer that did not take the claim
            return Attempt(True, "ok", stored)
        finally:
            await self._release_enrolment(key)

    async def _claim_enrolment(self, key: str, now: float) -> bool:
        """An atomic "first one wins" across processes: `record_failure` counts,
        in the same atomic step as it records, the claims stamped no later
        than this one, so of claims stamped in order exactly one sees 1. The
        winner releases (which also drops the losers' claims); a claim left
        behind by a crashed process lapses after ENROL_CLAIM seconds. Claims
        stamped out of order (clocks read a moment apart) could both win: the
        re-read after the write in `finish_enrolment` catches that."""
        stamp = max(now, time.time())
        return await self.regulator.store.record_failure("enrol:" + key, stamp, ENROL_CLAIM) == 1

    async def _release_enrolment(self, key: str) -> None:
        await self.regulator.store.clear_failures("enrol:" + key)

    # --- sessions ------------------------------------------------------------

    def signed_in(self, account: Account, now: float, previous: Session | None) -> Session:
        """A new session (new id) at the password level for `account`.

        When the same local user re-proves their password (a `max_age` rule),
        the proofs of higher levels they already hold are kept.
        """
        level = self.password_level.name
        proofs: dict[str, float] = {}
        if previous is not None and previous.source == "local" and previous.sub == account.username:
            proofs.update(previous.proofs)
            if self.levels.at_least(previous.level, level):
                level = previous.level
        proofs[self.password_level.name] = now
        s = self.runtime.codec.new(account.username, level, now, email=account.email, name=account.display_name,
                                   groups=account.groups, proofs=proofs, source="local")
        return s

    def stepped_up(self, session: Session, level: Level, now: float, account: Account | None) -> Session:
        """The session raised to `level` (proven now), under a new id.

        Raises ValueError when `level` is not the next step from the session's
        level (the pages check first, with `flow.can_step_up`)."""
        if not can_step_up(session.level, level.name, self.levels, self.password_level.name):
            raise ValueError(f"a session at {session.level!r} cannot step up to {level.name!r}")
        new_level = level.name if not self.levels.at_least(session.level, level.name) else session.level
        proofs = dict(session.proofs)
        proofs[level.name] = now
        groups = account.groups if (account is not None and session.source == "local") else session.groups
        return replace(session, sid=new_session_id(), level=new_level, proofs=proofs, seen=now, groups=groups)

    # --- first start ---------------------------------------------------------

    async def bootstrap(self, now: float) -> tuple[str, str] | None:
        """Create the configured first admin when there are no accounts at all.

        Returns (username, one-time password) for the caller to show once, or
        None when nothing was created (accounts exist, or another process won).
        """
        boot = self.settings.bootstrap_admin
        if boot is None or not self.settings.enabled or await self.accounts.list_accounts():
            return None
        password = generate_password()
        account = Account(boot.username, display_name="Administrator", groups=boot.groups,
                          password_hash=await _off_loop(hash_password, password, self.settings.scrypt),
                          created=now, updated=now)
        if not await self.accounts.add_account(account):
            return None
        return boot.username, password
