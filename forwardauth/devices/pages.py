"""The pages of device approval.

- /oauth2/devices: the user's devices (name, added, last seen), removing one,
  and adding one: a one-time pairing code with the QR code of the phone page's
  URL (the code in its fragment). It needs `devices.level` proven within
  `devices.pairing_max_age`: a device proves that level, so adding one must too.
- /oauth2/devices/phone: the phone page (its one script, devices-phone.js).
- /oauth2/devices/approve: the browser's side. Signed in (step-up): a button
  that sends the request; not signed in (passwordless sign-in, when
  `devices.passwordless`): a username. Either way the request's id, its
  target and who asked go into a sealed, host-only cookie for this browser.
- /oauth2/devices/wait: the phrase, refreshed every second (a short poll
  without a script: one page view per sign-in, and the sign-in pages stay
  script-free under the one CSP). Approved: the session is issued or raised to
  `devices.level` (once: the approval is claimed), then on to `rd`. Denied,
  expired and cancelled say so.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core.cookies import clear_cookie, set_cookie
from forwardauth.core.redirects import safe_redirect
from forwardauth.core.sealing import Sealer, SealError
from forwardauth.core.session import Session, new_session_id
from forwardauth.devices import credentials
from forwardauth.devices.context import request_service
from forwardauth.devices.service import DeviceService, Refusal
from forwardauth.devices.settings import DevicesSettings, settings
from forwardauth.services.account_names import normalise_username
from forwardauth.state.records import ApprovalState
from forwardauth.web.context import CTX, AppContext, Route
from forwardauth.web.factors import Need, Page
from forwardauth.web.forms import FormError, csrf_ok, form_page, read_form, redirect
from forwardauth.web.oauth2_start import need_for, offers, satisfied, start_url
from forwardauth.web.pages import SCRIPT_HEADERS, STATIC_DIR

DEVICES_PATH = "/oauth2/devices"
PHONE_PATH = "/oauth2/devices/phone"
APPROVE_PATH = "/oauth2/devices/approve"
WAIT_PATH = "/oauth2/devices/wait"
SCRIPT_PATH = "/oauth2/static/devices-phone.js"
MAX_FORM = 4096
MAX_RD = 1500  # the target goes into a cookie
WAIT_REFRESH = 1  # seconds between two looks of the waiting page

MSG_CSRF = "This form has expired or was not sent from this site. Please try again."
MSG_OFF = "Approving on a device is not enabled here."


def _svc(request: web.Request) -> DeviceService:
    return request_service(request)


def _on(request: web.Request) -> DevicesSettings | None:
    s = settings(request.app[CTX].runtime.config)
    return s if s.enabled and s.level else None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "never"


def message(request: web.Request, ctx: AppContext, status: int, title: str, text: str, *,
            link: tuple[str, str] | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return form_page(request, ctx, "message.html", status, title=title, text=text,
                     link_url=link[0] if link else None, link_text=link[1] if link else "", headers=headers)


def _audit(request: web.Request, event: str, *, user: str, level: str | None = None, reason: str,
           host: str | None = None, path: str | None = None) -> None:
    ctx = request.app[CTX]
    ctx.audit.emit(event, user=user, client=ctx.client(request), host=host, path=path, level=level, reason=reason)


# --- the devices page ------------------------------------------------------------------

async def _fresh(request: web.Request, ctx: AppContext, s: DevicesSettings
                 ) -> tuple[Session | None, web.StreamResponse | None]:
    """The session when it proved `devices.level` recently enough, else where to prove it."""
    now = time.time()
    session = ctx.current_session(request, now)
    need = Need(ctx.runtime.config.server.public_url + DEVICES_PATH, s.level, s.pairing_max_age, session)
    if satisfied(ctx, need, now):
        return session, None
    for factor in ctx.factors:
        if factor.start is not None and (resp := await factor.start(request, need)) is not None:
            return None, resp
    return None, message(request, ctx, 403, "Your devices", f"This page needs level {s.level}, proven in the last "
                                                           f"{int(s.pairing_max_age // 60)} minutes, and nothing "
                                                           "configured here can prove it.")


@dataclass(frozen=True)
class NewPairing:
    code: str
    base_url: str
    url: str  # the phone page with the code in its fragment (what the QR code holds)
    expires: str
    qr_svg: str


def _qr(url: str) -> str:
    """The QR code of `url` as an inline <svg> (no script, no style attribute)."""
    import segno  # here, not at the top: it costs 60 ms of every start (xml.sax), for a page seldom shown

    return segno.make(url, error="m").svg_inline(scale=4, border=2, dark="#111", light="#fff",
                                                 title="QR code: open it on the phone to pair", omitsize=True)


async def _devices_page(request: web.Request, ctx: AppContext, s: DevicesSettings, session: Session,
                        pairing: NewPairing | None = None, status: int = 200, error: str | None = None
                        ) -> web.Response:
    devices = await _svc(request).devices(session.sub)
    rows = [{"id": d.id, "name": d.name, "created": _when(d.created), "last_seen": _when(d.last_seen)}
            for d in devices]
    return form_page(request, ctx, "devices.html", status, form="devices", binding=session.sid, title="Your devices",
                     user=session.sub, level=s.level, devices=rows, pairing=pairing,
                     can_add=len(devices) < s.max_devices, max_devices=s.max_devices, error=error)


async def _devices_session(request: web.Request
                           ) -> tuple[AppContext, DevicesSettings, Session] | web.StreamResponse:
    """What the devices page needs: the part on, and a session fresh enough (else the answer)."""
    ctx = request.app[CTX]
    s = _on(request)
    if s is None:
        return message(request, ctx, 404, "Your devices", MSG_OFF)
    session, elsewhere = await _fresh(request, ctx, s)
    if session is None:
        return elsewhere  # type: ignore[return-value]
    return ctx, s, session


async def devices_get(request: web.Request) -> web.StreamResponse:
    got = await _devices_session(request)
    if isinstance(got, web.StreamResponse):
        return got
    return await _devices_page(request, *got)


async def _devices_form(request: web.Request, fields: tuple[str, ...]
                        ) -> tuple[AppContext, DevicesSettings, Session, dict[str, str]] | web.StreamResponse:
    got = await _devices_session(request)
    if isinstance(got, web.StreamResponse):
        return got
    ctx, s, session = got
    try:
        form = await read_form(request, fields, MAX_FORM)
    except FormError as exc:
        return await _devices_page(request, ctx, s, session, status=exc.status, error=exc.message)
    if not csrf_ok(request, ctx, form.get("csrf"), "devices", session.sid):
        return await _devices_page(request, ctx, s, session, status=403, error=MSG_CSRF)
    return ctx, s, session, form


async def devices_add(request: web.Request) -> web.StreamResponse:
    got = await _devices_form(request, ())
    if isinstance(got, web.StreamResponse):
        return got
    ctx, s, session, _ = got
    try:
        code, pairing = await _svc(request).new_pairing_code(session.sub)
    except Refusal as r:
        return await _devices_page(request, ctx, s, session, status=r.status, error=r.message)
    base = ctx.runtime.config.server.public_url
    shown = credentials.format_code(code)
    url = f"{base}{PHONE_PATH}#code={shown}"  # the fragment never reaches a server
    return await _devices_page(request, ctx, s, session, NewPairing(shown, base, url, _when(pairing.expires),
                                                                    _qr(url)))


async def devices_remove(request: web.Request) -> web.StreamResponse:
    got = await _devices_form(request, ("id",))
    if isinstance(got, web.StreamResponse):
        return got
    ctx, s, session, form = got
    try:
        await _svc(request).remove_device(form["id"], session.sub, by=session.sub, client=ctx.client(request))
    except Refusal as r:
        return await _devices_page(request, ctx, s, session, status=r.status, error=r.message)
    return redirect(DEVICES_PATH, 303)


# --- the phone page -----------------------------------------------------------------------

async def phone_get(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    if _on(request) is None:
        return message(request, ctx, 404, "Approve sign-ins", MSG_OFF)
    base = ctx.runtime.config.server.public_url
    return form_page(request, ctx, "device_phone.html", 200, title="Approve sign-ins",
                     devices_url=base + DEVICES_PATH, headers=SCRIPT_HEADERS)


async def phone_script(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC_DIR / Path(SCRIPT_PATH).name).read_bytes(), content_type="text/javascript",
                        charset="utf-8", headers={"Cache-Control": "public, max-age=3600",
                                                  "X-Content-Type-Options": "nosniff"})


# --- the browser's side of an approval ---------------------------------------------------------

@dataclass(frozen=True)
class Ticket:
    """What this browser asked: kept sealed in its cookie, never in the store."""

    rid: str
    user: str
    rd: str
    level: str
    sid: str  # the session that asked (step-up), "" for a passwordless sign-in
    exp: float


def _cookie_name(ctx: AppContext) -> str:
    cfg = ctx.runtime.config.session
    base = cfg.cookie_name[:100]
    if cfg.secure and not base.startswith("__Host-"):
        base = "__Host-" + base.removeprefix("__Secure-")
    return base + "-approval"


def _sealer(ctx: AppContext) -> Sealer:
    return Sealer(ctx.runtime.keyring, "device-approval", max_length=3072)


def _ticket_cookie(ctx: AppContext, t: Ticket | None, now: float) -> str:
    """Set-Cookie: host-only (the __Host- prefix when Secure), Strict, HttpOnly."""
    cfg = replace(ctx.runtime.config.session, same_site="Strict", domain=None)
    if t is None:
        return clear_cookie(cfg, _cookie_name(ctx))
    value = _sealer(ctx).seal(json.dumps(asdict(t), separators=(",", ":")).encode())
    return set_cookie(cfg, _cookie_name(ctx), value, int(t.exp - now))


def _ticket(request: web.Request, ctx: AppContext, now: float) -> Ticket | None:
    raw = request.cookies.get(_cookie_name(ctx))
    if not raw:
        return None
    try:
        t = Ticket(**json.loads(_sealer(ctx).open(raw)))
    except (SealError, ValueError, TypeError):
        return None
    return t if t.exp > now else None


def _target(ctx: AppContext, request: web.Request, rd_value: str | None, level_value: str | None,
            s: DevicesSettings) -> tuple[str, str]:
    srv = ctx.runtime.config.server
    rd = safe_redirect(rd_value, srv.public_url, srv.allowed_redirect_domains)
    if len(rd) > MAX_RD:
        rd = safe_redirect(None, srv.public_url, srv.allowed_redirect_domains)
    levels = ctx.runtime.config.levels
    if level_value is not None and level_value in levels and levels.at_least(s.level, level_value):
        return rd, level_value
    return rd, s.level


def _approve_page(request: web.Request, ctx: AppContext, s: DevicesSettings, session: Session | None, rd: str,
                  level: str, status: int = 200, error: str | None = None, username: str = "",
                  headers: dict[str, str] | None = None) -> web.Response:
    where: Page
    if session is not None:
        reason = (f"Signed in as {session.sub}. A request goes to your paired devices: pick there the phrase this "
                  f"page will show, and this browser gets level {s.level}.")
        where = "step_up"
    else:
        reason = ("Type your username. A request goes to your paired devices: pick there the phrase this page "
                  "will show, and you are signed in.")
        where = "sign_in"
    others = [o for o in offers(request, ctx, Need(rd, level, None, session), where) if "via=device" not in o.url]
    return form_page(request, ctx, "device_approve.html", status, form="device-approve",
                     binding=session.sid if session else "", title="Approve on your device", reason=reason, rd=rd,
                     level=level, ask_username=session is None, username=username, offers=others, error=error,
                     user=session.sub if session else None, headers=headers)


async def approve_get(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    s = _on(request)
    if s is None:
        return message(request, ctx, 404, "Approve on your device", MSG_OFF)
    rd, level = _target(ctx, request, request.query.get("rd"), request.query.get("level"), s)
    session = ctx.current_session(request)
    if session is None and not s.passwordless:
        return message(request, ctx, 403, "Approve on your device", "Sign in first; then a device can raise your "
                       "sign-in.", link=(start_url(rd, level), "Sign in"))
    if session is not None and not await _svc(request).has_devices(session.sub):
        return message(request, ctx, 409, "Approve on your device", "No device is paired with your account yet. "
                       "Add one on your devices page (it asks you to sign in with another method first).",
                       link=(DEVICES_PATH, "Your devices"))
    return _approve_page(request, ctx, s, session, rd, level)


async def approve_post(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    s = _on(request)
    if s is None:
        return message(request, ctx, 404, "Approve on your device", MSG_OFF)
    now = time.time()
    session = ctx.current_session(request, now)
    try:
        form = await read_form(request, (), MAX_FORM)
    except FormError as exc:
        rd, level = _target(ctx, request, None, None, s)
        return _approve_page(request, ctx, s, session, rd, level, exc.status, exc.message)
    rd, level = _target(ctx, request, form.get("rd"), form.get("level"), s)
    if not csrf_ok(request, ctx, form.get("csrf"), "device-approve", session.sid if session else ""):
        return _approve_page(request, ctx, s, session, rd, level, 403, MSG_CSRF)
    if session is not None:
        user = session.sub
    elif not s.passwordless:
        return message(request, ctx, 403, "Approve on your device", "Sign in first.", link=(start_url(rd, level),
                                                                                              "Sign in"))
    else:
        user = normalise_username(form.get("username", ""))
        if not user:
            return _approve_page(request, ctx, s, None, rd, level, 400, "Enter your username.")
    target = urlsplit(rd)
    try:
        req = await _svc(request).request_approval(user, target.hostname or "", target.path or "/",
                                                   ctx.client(request), request.headers.get("User-Agent"))
    except Refusal as r:
        headers = {"Retry-After": str(max(1, int(r.retry_after)))} if r.retry_after else None
        return _approve_page(request, ctx, s, session, rd, level, r.status, r.message, username=user, headers=headers)
    ticket = Ticket(req.id, user, rd, level, session.sid if session else "", req.expires + 60)
    resp = redirect(WAIT_PATH, 303)
    resp.headers.add("Set-Cookie", _ticket_cookie(ctx, ticket, now))
    return resp


def _ended(request: web.Request, ctx: AppContext, t: Ticket, status: int, title: str, text: str,
           now: float) -> web.Response:
    resp = message(request, ctx, status, title, text, link=(start_url(t.rd, t.level), "Try again"))
    resp.headers.add("Set-Cookie", _ticket_cookie(ctx, None, now))
    return resp


async def wait_get(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    s = _on(request)
    if s is None:
        return message(request, ctx, 404, "Approve on your device", MSG_OFF)
    now = time.time()
    t = _ticket(request, ctx, now)
    if t is None:
        return message(request, ctx, 400, "Approve on your device", "No approval is waiting in this browser.",
                       link=("/", "Start again"))
    req = await _svc(request).outcome(t.rid)
    state = req.outcome(now) if req is not None else ApprovalState.EXPIRED
    if state is ApprovalState.PENDING:
        assert req is not None
        return form_page(request, ctx, "device_wait.html", 200, form="device-cancel", binding=t.rid,
                         title="Approve on your device", phrase=req.phrase, for_user=t.user,
                         expires=_when(req.expires), refresh=WAIT_REFRESH)
    if state is ApprovalState.APPROVED:
        return await _complete(request, ctx, s, t, now)
    if state is ApprovalState.DENIED and req is not None and req.reason == "wrong_phrase":
        return _ended(request, ctx, t, 403, "Denied", "The phrase picked on the device was not the one this page "
                      "showed, so the request was denied. If you did not start this sign-in, someone else did: "
                      "change your password.", now)
    if state is ApprovalState.DENIED:
        return _ended(request, ctx, t, 403, "Denied", "The request was denied on the device.", now)
    if state is ApprovalState.CANCELLED:
        return _ended(request, ctx, t, 200, "Cancelled", "You cancelled the request.", now)
    return _ended(request, ctx, t, 410, "Expired", "Nobody answered the request in time, so it expired.", now)


async def cancel_post(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    now = time.time()
    t = _ticket(request, ctx, now)
    try:
        form = await read_form(request, (), MAX_FORM)
    except FormError as exc:
        return message(request, ctx, exc.status, "Approve on your device", exc.message)
    if t is None:
        return message(request, ctx, 400, "Approve on your device", "No approval is waiting in this browser.",
                       link=("/", "Start again"))
    if not csrf_ok(request, ctx, form.get("csrf"), "device-cancel", t.rid):
        return message(request, ctx, 403, "Approve on your device", MSG_CSRF, link=(WAIT_PATH, "Back"))
    await _svc(request).cancel(t.rid)
    return redirect(WAIT_PATH, 303)  # which says "Cancelled" (or how it ended, if the device was quicker)


async def _complete(request: web.Request, ctx: AppContext, s: DevicesSettings, t: Ticket,
                    now: float) -> web.StreamResponse:
    """Approved: the session this browser gets, once."""
    if not await ctx.store.claim_once("device-approval-used:" + t.rid, s.request_ttl + 120, now):
        return _ended(request, ctx, t, 409, "Already used", "This approval has been used already.", now)
    levels = ctx.runtime.config.levels
    session = ctx.current_session(request, now)
    if t.sid:  # a step-up: the very session that asked
        if session is None or session.sid != t.sid or session.sub != t.user:
            return _ended(request, ctx, t, 401, "Session changed", "The sign-in that asked for this approval has "
                          "ended or changed in this browser.", now)
        proofs = dict(session.proofs)
        proofs[s.level] = now
        level = session.level if levels.at_least(session.level, s.level) else s.level
        new = replace(session, sid=new_session_id(), level=level, proofs=proofs, seen=now)
        _audit(request, "step_up", user=t.user, level=s.level, reason="device approval",
               host=urlsplit(t.rd).hostname, path=urlsplit(t.rd).path or "/")
    else:  # a passwordless sign-in: a local account that may sign in
        account = await ctx.store.get_account(t.user)
        if account is None or account.status != "active" or account.kind != "human":
            _audit(request, "signin_refused", user=t.user, reason="device approval: no active local account")
            return _ended(request, ctx, t, 403, "Cannot sign in", "This account cannot sign in here.", now)
        proofs = {s.level: now}
        if session is not None and session.sub == t.user and session.source == "local":
            proofs = {**session.proofs, **proofs}
        new = ctx.runtime.codec.new(t.user, s.level, now, email=account.email, name=account.display_name,
                                    groups=account.groups, proofs=proofs, source="local")
        _audit(request, "signin_ok", user=t.user, level=s.level, reason="device approval")
    if session is not None:
        await ctx.store.revoke(session.sid, session.exp)  # the old cookie dies with the new one
    need = need_for(ctx, t.rd, t.level, new)
    target = t.rd if satisfied(ctx, need, now) else start_url(t.rd, need.level)
    resp = redirect(target, 303)
    resp.headers.add("Set-Cookie", ctx.session_cookie(new, now))
    resp.headers.add("Set-Cookie", _ticket_cookie(ctx, None, now))
    return resp


def routes() -> tuple[Route, ...]:
    return (
        Route("GET", DEVICES_PATH, devices_get),
        Route("POST", DEVICES_PATH + "/add", devices_add),
        Route("POST", DEVICES_PATH + "/remove", devices_remove),
        Route("GET", PHONE_PATH, phone_get),
        Route("GET", SCRIPT_PATH, phone_script),
        Route("GET", APPROVE_PATH, approve_get),
        Route("POST", APPROVE_PATH, approve_post),
        Route("GET", WAIT_PATH, wait_get),
        Route("POST", DEVICES_PATH + "/cancel", cancel_post),
    )
