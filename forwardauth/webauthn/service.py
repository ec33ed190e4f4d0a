"""The ceremonies end to end, with the store: what the web routes call.

Each `start_*` issues a challenge and the options for the browser; each
`finish_*` claims the challenge (single use, across replicas), verifies the
answer, and applies what needs the store: the credential's owner, its lock,
the counter rule (a counter that does not move forward locks the credential
in the same atomic store step), and the level the proof gives. Failures are
`Refused` with a typed reason; the caller audits and regulates them.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from forwardauth.core.levels import Level, Levels
from forwardauth.core.session import Session, new_session_id
from forwardauth.state.base import ClaimStore, WebAuthnStore
from forwardauth.state.records import Advance, DuplicateCredential, TooManyCredentials
from forwardauth.state.records import WebAuthnCredential as Credential
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import CLAIM_MARGIN, Ceremony, Challenge
from forwardauth.webauthn.settings import WebAuthnSettings
from forwardauth.webauthn.verify import (
    Reason,
    Refused,
    parse_assertion,
    verify_assertion,
    verify_registration,
)


class Store(WebAuthnStore, ClaimStore, Protocol):
    """What the ceremonies need of the state store: the credentials, and single-use
    claims shared by every replica (challenges)."""

# What a proof says about how the user authenticated, in RFC 8176 `amr` values:
# possession of a hardware-bound key, after a user presence test; with user
# verification (PIN or biometric: WebAuthn does not say which) it is two factors.
AMR_PRESENCE = ("hwk", "user")
AMR_VERIFIED = ("hwk", "user", "mfa")


@dataclass(frozen=True)
class Proof:
    """A verified assertion and what it proves."""

    user: str
    level: Level  # with the acr/amr the levels section gives it
    amr: tuple[str, ...]
    user_verified: bool
    credential: Credential  # as it was before this use (name, backup flags shown to the user)
    backed_up: bool


class WebAuthnService:
    def __init__(self, settings: WebAuthnSettings, levels: Levels, store: Store):
        self.settings = settings
        self.levels = levels
        self.store = store

    # -- registration -------------------------------------------------------------------

    async def start_registration(self, user: str, sid: str, user_name: str, display_name: str,
                                 now: float) -> tuple[Challenge, dict[str, Any]]:
        existing = await self.store.webauthn_credentials(user)
        if len(existing) >= self.settings.max_credentials:
            raise Refused(Reason.TOO_MANY, str(self.settings.max_credentials))
        # One user handle per user: an authenticator keeps one entry per account.
        handle = existing[0].user_handle if existing else challenges.new_user_handle()
        challenge = challenges.issue(Ceremony.REGISTER, now, self.settings.user_verification, user=user, sid=sid,
                                     user_handle=handle)
        return challenge, challenges.creation_options(self.settings, challenge, user_name, display_name, existing)

    async def finish_registration(self, challenge: Challenge, data: Mapping[str, Any], name: str,
                                  now: float) -> Credential:
        await self._claim(challenge, now)
        credential = verify_registration(self.settings, challenge, data, name, now)
        try:
            await self.store.add_webauthn_credential(credential, self.settings.max_credentials)
        except DuplicateCredential as exc:
            raise Refused(Reason.DUPLICATE, str(exc)) from None
        except TooManyCredentials as exc:
            raise Refused(Reason.TOO_MANY, str(exc)) from None
        return credential

    # -- assertions -----------------------------------------------------------------------

    async def start_step_up(self, user: str, sid: str, target: str, now: float) -> tuple[Challenge, dict[str, Any]]:
        """A challenge for the user's own credentials, aiming at level `target`."""
        if target not in self.levels or not self.settings.reaches(self.levels, target):
            raise Refused(Reason.NO_LEVEL, f"no WebAuthn proof reaches {target!r}")
        usable = [c for c in await self.store.webauthn_credentials(user) if c.locked is None]
        if not usable:
            raise Refused(Reason.UNKNOWN_CREDENTIAL, "no usable credential")
        uv = "required" if self.settings.needs_user_verification(self.levels, target) else \
            self.settings.user_verification
        challenge = challenges.issue(Ceremony.STEP_UP, now, uv, user=user, sid=sid, target=target)
        return challenge, challenges.request_options(self.settings, challenge, usable)

    async def start_sign_in(self, now: float) -> tuple[Challenge, dict[str, Any]]:
        """A challenge for any discoverable credential (passwordless, conditional UI).

        User verification is required: without it a passkey is possession only,
        one factor, and a sign-in with no password needs two."""
        challenge = challenges.issue(Ceremony.SIGN_IN, now, "required")
        return challenge, challenges.request_options(self.settings, challenge, None)

    async def credential_of(self, data: Any) -> Credential | None:
        """The registered credential an answer names (None: unknown), without verifying anything:
        a passkey sign-in learns whose attempt it is (for the regulation) before checking it."""
        return await self.store.webauthn_credential(parse_assertion(data).raw_id)

    async def finish_assertion(self, challenge: Challenge, data: Mapping[str, Any], now: float) -> Proof:
        await self._claim(challenge, now)
        response = parse_assertion(data)
        credential = await self.store.webauthn_credential(response.raw_id)
        if credential is None:
            raise Refused(Reason.UNKNOWN_CREDENTIAL)
        handle = response.response.user_handle
        if challenge.ceremony is Ceremony.SIGN_IN:
            if not handle or not hmac.compare_digest(handle, credential.user_handle):
                raise Refused(Reason.USER_HANDLE, credential=credential)
        else:
            if challenge.user is None or not hmac.compare_digest(credential.user.encode(), challenge.user.encode()):
                raise Refused(Reason.OTHER_USER)  # the other user's credential is not named in this user's audit
            if handle and not hmac.compare_digest(handle, credential.user_handle):
                raise Refused(Reason.USER_HANDLE, credential=credential)
        if credential.locked is not None:
            raise Refused(Reason.LOCKED, credential=credential)
        target = challenge.target if challenge.ceremony is Ceremony.STEP_UP else None
        need_uv = target is None or self.settings.needs_user_verification(self.levels, target)
        try:
            assertion = verify_assertion(self.settings, challenge, response, credential, need_uv)
        except Refused as exc:  # name the key in the refusal (its owner is this user: checked above)
            raise Refused(exc.reason, exc.detail, exc.credential or credential) from None
        reason = (f"signature counter went from {credential.sign_count} to {assertion.sign_count}: "
                  "possible cloned authenticator")
        done = await self.store.advance_webauthn_credential(credential.id, assertion.sign_count, assertion.backed_up,
                                        assertion.user_verified, now, reason)
        if done is Advance.REGRESSED:
            raise Refused(Reason.COUNTER, f"{credential.sign_count} -> {assertion.sign_count}", credential)
        if done is Advance.LOCKED:
            raise Refused(Reason.LOCKED, credential=credential)
        if done is Advance.GONE:
            raise Refused(Reason.UNKNOWN_CREDENTIAL, "removed meanwhile")
        level = self.settings.level_of(self.levels, assertion.user_verified)
        if level is None or (target is not None and not self.levels.at_least(level.name, target)):
            raise Refused(Reason.NO_LEVEL, f"user verified: {assertion.user_verified}", credential)
        return Proof(credential.user, level, AMR_VERIFIED if assertion.user_verified else AMR_PRESENCE,
                     assertion.user_verified, credential, assertion.backed_up)

    def raised(self, session: Session, proof: Proof, now: float) -> Session:
        """`session` with `proof` added, under a new id: its level is the higher of the
        two, and the proven level's time is now (so `max_age` rules see it)."""
        level = proof.level.name if not self.levels.at_least(session.level, proof.level.name) else session.level
        return replace(session, sid=new_session_id(), level=level, proofs={**session.proofs, proof.level.name: now},
                       seen=now)

    async def _claim(self, challenge: Challenge, now: float) -> None:
        if not await self.store.claim_once(challenge.claim_key(), self.settings.timeout + CLAIM_MARGIN, now):
            raise Refused(Reason.CHALLENGE_USED)
