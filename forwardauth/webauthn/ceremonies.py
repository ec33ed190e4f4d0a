"""The JSON half of the pages: options for the browser, then its answer.

Each ceremony is two POSTs from forwardauth's script (static/webauthn.js):
`.../options` issues a challenge (sealed into a short-lived, host-only,
SameSite=Strict cookie of this browser) and returns what
navigator.credentials.create()/get() takes; the answer is verified by
`WebAuthnService` (single use across replicas, bound to the session that
asked). Every request carries the page's CSRF token. Answers are
`{"redirect": URL}` or `{"error": message}` with one exact status per case;
every refusal writes one audit line, and failed answers count in the
regulation like failed passwords and codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from forwardauth.core.sealing import SealError
from forwardauth.services.account_names import account_store, is_upstream_account
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.records import WebAuthnCredential
from forwardauth.state.records import webauthn_fingerprint as fingerprint
from forwardauth.web.context import CTX, AppContext
from forwardauth.web.facts import Facts, audit, facts
from forwardauth.web.forms import csrf_ok, query
from forwardauth.webauthn import challenges
from forwardauth.webauthn.challenges import Ceremony, ChallengeError
from forwardauth.webauthn.common import (
    MANAGE_PATH,
    MESSAGES,
    MSG_CSRF,
    MSG_EXPIRED,
    MSG_FRESH,
    MSG_SESSION_ENDED,
    MSG_STORE,
    MSG_UNAVAILABLE,
    Current,
    JsonError,
    banned,
    challenge_cookie,
    clear_challenge_cookie,
    current,
    json_answer,
    json_error,
    may_change,
    next_url,
    read_json,
    safe_rd,
    sealed_challenge,
    target_level,
)
from forwardauth.webauthn.service import Proof
from forwardauth.webauthn.verify import Reason, Refused

Handler = Callable[[web.Request], Awaitable[web.Response]]
Ceremonial = Callable[[web.Request, AppContext, Current, Facts], Awaitable[web.Response]]


def _guarded(fn: Ceremonial) -> Handler:
    """The route handler of one ceremony step: 404 while the part is off, the request's facts
    for `fn`, and no 500 for what a browser sends (bad JSON, a store outage get their answer)."""

    async def run(request: web.Request) -> web.Response:
        ctx = request.app[CTX]
        part = current(request)
        if part is None:
            return json_error(404, MSG_UNAVAILABLE)
        f = facts(request, ctx)
        try:
            return await fn(request, ctx, part, f)
        except JsonError as exc:
            audit(ctx, f, "webauthn_failed", user=f.user, reason=exc.reason)
            return json_error(exc.status, exc.message)
        except StoreUnavailable:
            audit(ctx, f, "webauthn_failed", user=f.user, reason="state store unavailable")
            return json_error(503, MSG_STORE, {"Retry-After": "5"})

    return run


def _refused(ctx: AppContext, f: Facts, exc: Refused, user: str | None, rd: str, level: str | None,
             what: str) -> web.Response:
    """The audit line and the answer for a refused ceremony."""
    status, message = MESSAGES[exc.reason]
    cred = exc.credential
    reason = f"{what}: {exc.reason.value}" + (f" ({exc.detail})" if exc.detail else "") + \
        (f"; key {fingerprint(cred.id)}" if cred is not None else "")
    event = "webauthn_locked" if exc.reason is Reason.COUNTER else "webauthn_failed"
    audit(ctx, f, event, user=user, target=rd, level=level, reason=reason)
    if exc.reason in (Reason.DUPLICATE, Reason.TOO_MANY, Reason.NAME) and exc.detail and not exc.detail.isdigit():
        message = exc.detail  # the store's or the name check's own words
    return json_error(status, message)


def _open(part: Current, request: web.Request, ctx: AppContext, ceremony: Ceremony, f: Facts) -> challenges.Challenge:
    sid = f.session.sid if f.session is not None else None
    return challenges.open_sealed(part.sealer, sealed_challenge(request, ctx, ceremony), ceremony, f.now,
                                  part.settings.timeout, sid=sid)


def _options(ctx: AppContext, ceremony: Ceremony, part: Current, challenge: challenges.Challenge,
             options: dict) -> web.Response:
    try:
        token = challenges.seal(part.sealer, challenge)
    except SealError:  # cannot happen with a sane key ring; never a 500 all the same
        return json_error(500, MSG_EXPIRED)
    return json_answer(options, headers={"Set-Cookie": challenge_cookie(ctx, ceremony, token,
                                                                          part.settings.timeout)})


# --- registration --------------------------------------------------------------------------


async def _registration_gate(request: web.Request, ctx: AppContext, part: Current, f: Facts,
                             data: dict) -> web.Response | None:
    """The checks both registration requests make: a session, the CSRF token, a fresh enough level."""
    if f.session is None or f.user is None:
        audit(ctx, f, "webauthn_failed", reason="register: no session")
        return json_error(401, MSG_SESSION_ENDED)
    if not csrf_ok(request, ctx, data.get("csrf"), "webauthn-manage", f.session.sid):
        audit(ctx, f, "webauthn_failed", user=f.user, reason="register: csrf")
        return json_error(403, MSG_CSRF)
    creds = await part.service.store.webauthn_credentials(f.user)
    ok, needed = may_change(part, ctx, f.session, bool(creds), f.now)
    if not ok:
        audit(ctx, f, "webauthn_failed", user=f.user, level=needed, reason=f"register: not fresh ({needed})")
        return json_error(403, MSG_FRESH)
    return None


@_guarded
async def register_options(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level", "name"})  # the script sends the name both times
    if (refused := await _registration_gate(request, ctx, part, f, data)) is not None:
        return refused
    assert f.session is not None and f.user is not None
    display = f.session.name or f.session.email or f.session.sub
    try:
        challenge, options = await part.service.start_registration(f.user, f.session.sid, f.user, display, f.now)
    except Refused as exc:
        return _refused(ctx, f, exc, f.user, "", None, "register")
    return _options(ctx, Ceremony.REGISTER, part, challenge, options)


@_guarded
async def register(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level", "name", "credential"})
    if (refused := await _registration_gate(request, ctx, part, f, data)) is not None:
        return refused
    assert f.session is not None and f.user is not None
    rd = safe_rd(ctx, data.get("rd")) if data.get("rd") else ""
    level = data.get("level", "") if data.get("level") in ctx.runtime.config.levels else ""
    try:
        challenge = _open(part, request, ctx, Ceremony.REGISTER, f)
        cred = await part.service.finish_registration(challenge, data.get("credential", {}), data.get("name", ""),
                                                      f.now)
    except ChallengeError as exc:
        audit(ctx, f, "webauthn_failed", user=f.user, reason=f"register: {exc}")
        return json_error(400, MSG_EXPIRED)
    except Refused as exc:
        return _refused(ctx, f, exc, f.user, "", None, "register")
    audit(ctx, f, "webauthn_registered", user=f.user, reason=describe(cred))
    return json_answer({"redirect": query(MANAGE_PATH, rd=rd, level=level, done="added")},
                       headers={"Set-Cookie": clear_challenge_cookie(ctx, Ceremony.REGISTER)})


def describe(c: WebAuthnCredential) -> str:
    """For the audit: name, kind and flags; never the id or the key (a fingerprint stands for it)."""
    kind = "passkey" if c.discoverable else "security key"
    flags = [f"model {c.aaguid}", "user verification" if c.user_verifying else "presence only"]
    if c.backup_eligible:
        flags.append("synced" if c.backed_up else "may sync")
    return f"{c.name!r} ({kind}; {', '.join(flags)}); key {fingerprint(c.id)}"


# --- step-up -------------------------------------------------------------------------------


@_guarded
async def step_up_options(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level"})
    rd = safe_rd(ctx, data.get("rd"))
    if f.session is None or f.user is None:
        audit(ctx, f, "webauthn_failed", target=rd, reason="step-up: no session")
        return json_error(401, MSG_SESSION_ENDED)
    if not csrf_ok(request, ctx, data.get("csrf"), "webauthn-step-up", f.session.sid):
        audit(ctx, f, "webauthn_failed", user=f.user, target=rd, reason="step-up: csrf")
        return json_error(403, MSG_CSRF)
    level = target_level(ctx, rd, data.get("level"), f.session)
    verdict = await part.regulator.check(f.user, f.client, f.now)
    if verdict.banned:
        audit(ctx, f, "webauthn_failed", user=f.user, target=rd, level=level, reason="step-up: banned")
        return banned(verdict)
    try:
        challenge, options = await part.service.start_step_up(f.user, f.session.sid, level, f.now)
    except Refused as exc:
        return _refused(ctx, f, exc, f.user, rd, level, "step-up")
    return _options(ctx, Ceremony.STEP_UP, part, challenge, options)


@_guarded
async def step_up(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level", "credential"})
    rd = safe_rd(ctx, data.get("rd"))
    if f.session is None or f.user is None:
        audit(ctx, f, "webauthn_failed", target=rd, reason="step-up: no session")
        return json_error(401, MSG_SESSION_ENDED)
    user, session = f.user, f.session
    if not csrf_ok(request, ctx, data.get("csrf"), "webauthn-step-up", session.sid):
        audit(ctx, f, "webauthn_failed", user=user, target=rd, reason="step-up: csrf")
        return json_error(403, MSG_CSRF)
    try:
        challenge = _open(part, request, ctx, Ceremony.STEP_UP, f)
    except ChallengeError as exc:
        audit(ctx, f, "webauthn_failed", user=user, target=rd, reason=f"step-up: {exc}")
        return json_error(400, MSG_EXPIRED)
    level = challenge.target or ""
    verdict, ticket = await part.regulator.reserve(user, f.client, f.now)
    if ticket is None:
        audit(ctx, f, "webauthn_failed", user=user, target=rd, level=level, reason="step-up: banned")
        return banned(verdict)
    try:
        proof = await part.service.finish_assertion(challenge, data.get("credential", {}), f.now)
    except Refused as exc:
        await part.regulator.failed(ticket)
        return _refused(ctx, f, exc, user, rd, level, "step-up")
    verdict = await part.regulator.passed(ticket, f.now)
    if verdict.banned:
        audit(ctx, f, "webauthn_failed", user=user, target=rd, level=level, reason="step-up: banned meanwhile")
        return banned(verdict)
    new = part.service.raised(session, proof, f.now)
    await ctx.store.revoke(session.sid, session.exp)
    audit(ctx, f, "step_up", user=user, target=rd, level=proof.level.name, reason=_proved(proof))
    resp = json_answer({"redirect": next_url(ctx, rd, level, new, f.now)},
                       headers={"Set-Cookie": clear_challenge_cookie(ctx, Ceremony.STEP_UP)})
    resp.headers.add("Set-Cookie", ctx.session_cookie(new, f.now))
    return resp


def _proved(proof: Proof) -> str:
    how = "with user verification" if proof.user_verified else "presence only"
    return f"webauthn: {proof.credential.name!r} ({how}; amr {' '.join(proof.amr)}); key " \
           f"{fingerprint(proof.credential.id)}"


# --- passwordless sign-in ------------------------------------------------------------------


@_guarded
async def sign_in_options(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level"})
    rd = safe_rd(ctx, data.get("rd"))
    if not part.settings.passwordless:
        return json_error(404, MSG_UNAVAILABLE)
    if not csrf_ok(request, ctx, data.get("csrf"), "webauthn-sign-in"):
        audit(ctx, f, "webauthn_failed", target=rd, reason="sign-in: csrf")
        return json_error(403, MSG_CSRF)
    verdict = await part.regulator.check_client(f.client, f.now)
    if verdict.banned:
        audit(ctx, f, "webauthn_failed", target=rd, reason="sign-in: banned")
        return banned(verdict)
    challenge, options = await part.service.start_sign_in(f.now)
    return _options(ctx, Ceremony.SIGN_IN, part, challenge, options)


@_guarded
async def sign_in(request: web.Request, ctx: AppContext, part: Current, f: Facts) -> web.Response:
    data = await read_json(request, {"csrf", "rd", "level", "credential"})
    rd = safe_rd(ctx, data.get("rd"))
    if not part.settings.passwordless:
        return json_error(404, MSG_UNAVAILABLE)
    if not csrf_ok(request, ctx, data.get("csrf"), "webauthn-sign-in"):
        audit(ctx, f, "webauthn_failed", target=rd, reason="sign-in: csrf")
        return json_error(403, MSG_CSRF)
    try:
        challenge = _open(part, request, ctx, Ceremony.SIGN_IN, f)
    except ChallengeError as exc:
        audit(ctx, f, "webauthn_failed", target=rd, reason=f"sign-in: {exc}")
        return json_error(400, MSG_EXPIRED)
    try:
        cred = await part.service.credential_of(data.get("credential", {}))
    except Refused as exc:
        await part.regulator.client_failed(f.client, f.now)
        return _refused(ctx, f, exc, None, rd, None, "sign-in")
    if cred is None:
        # Nobody's key here: counted for the client only (there is no user to count it for).
        verdict = await part.regulator.client_failed(f.client, f.now)
        audit(ctx, f, "webauthn_failed", target=rd, reason="sign-in: " + Reason.UNKNOWN_CREDENTIAL.value
              + ("; ban started" if verdict.banned else ""))
        return json_error(*MESSAGES[Reason.UNKNOWN_CREDENTIAL])
    return await _sign_in_as(request, ctx, part, f, cred, challenge, data, rd)


async def _sign_in_as(request: web.Request, ctx: AppContext, part: Current, f: Facts, cred: WebAuthnCredential,
                      challenge: challenges.Challenge, data: dict, rd: str) -> web.Response:
    user = cred.user
    verdict, ticket = await part.regulator.reserve(user, f.client, f.now)
    if ticket is None:
        audit(ctx, f, "webauthn_failed", user=user, target=rd, reason="sign-in: banned")
        return banned(verdict)
    try:
        proof = await part.service.finish_assertion(challenge, data.get("credential", {}), f.now)
    except Refused as exc:
        await part.regulator.failed(ticket)
        return _refused(ctx, f, exc, user, rd, None, "sign-in")
    # Only a local account signs in with a passkey alone: it has the groups, e-mail and status
    # a session needs. An upstream identity's key ("oidc:<sub>") steps its provider's sessions up.
    account = None if is_upstream_account(user) else await account_store(ctx.store).get_account(user)
    if account is None or account.kind != "human" or not account.active:
        await part.regulator.failed(ticket)
        why = "not a local account" if account is None else "system account" if account.kind != "human" \
            else "account locked"
        audit(ctx, f, "signin_refused", user=user, target=rd, reason=f"passkey: {why}")
        msg = "This account is locked. Ask an administrator to unlock it." if account is not None and \
            not account.active else "This passkey cannot sign in here on its own: sign in another way, then use it."
        return json_error(403, msg)
    verdict = await part.regulator.passed(ticket, f.now)
    if verdict.banned:
        audit(ctx, f, "webauthn_failed", user=user, target=rd, reason="sign-in: banned meanwhile")
        return banned(verdict)
    session = ctx.runtime.codec.new(account.username, proof.level.name, f.now, email=account.email,
                                    name=account.display_name, groups=account.groups,
                                    proofs={proof.level.name: f.now}, source="local")
    if f.session is not None:
        await ctx.store.revoke(f.session.sid, f.session.exp)
    audit(ctx, f, "signin_ok", user=user, target=rd, level=proof.level.name, reason=_proved(proof))
    resp = json_answer({"redirect": next_url(ctx, rd, data.get("level", ""), session, f.now)},
                       headers={"Set-Cookie": clear_challenge_cookie(ctx, Ceremony.SIGN_IN)})
    resp.headers.add("Set-Cookie", ctx.session_cookie(session, f.now))
    return resp
