"""The tokens part in the decisions, unit by unit: its credential source and
what the pipeline answers for it (grace, `stale_sessions_up_to`, error
descriptions: core.authorize.StorePolicy and core.responses), the token
index, the last-used recorder, and the snapshots failing closed on any
exception (the one loop that refreshes them: test_refresh.py)."""

from __future__ import annotations

import json
import time

import pytest

from forwardauth import composition
from forwardauth.core import responses
from forwardauth.core.authorize import Authorizer, health_of
from forwardauth.core.credentials import ABSENT, Credential, Source, Status, valid
from forwardauth.core.request import FORWARDED, OriginalRequest
from forwardauth.core.runtime import Runtime
from forwardauth.core.session import Session
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.memory import MemoryStore
from forwardauth.state.records import Account
from forwardauth.state.revocations import Revocations
from forwardauth.tokens import macaroon as mac
from forwardauth.tokens.decisions import BearerTokens
from forwardauth.tokens.index import TokenIndex, UsageRecorder
from forwardauth.tokens.service import OPERATOR, TokenService

from .conftest import make_config

POLICY = """
policy:
  default: deny
  rules:
    - {hosts: [app.test], paths: [/public/], allow: anonymous}
    - {hosts: [app.test], paths: [/mfa/], level: mfa}
    - {hosts: [app.test], level: password}
tokens:
  stale_grace: 30s
"""


STALE = "token: state store unreachable past the grace period"


def req(path: str = "/api/x", method: str = "GET") -> OriginalRequest:
    return OriginalRequest(method=method, scheme="https", host="app.test", port=None, path=path, raw_uri=path,
                           client=None, accept="application/json")


class World:
    """One runtime, a memory store, the revocation snapshot and the tokens part's decision state."""

    def __init__(self, extra: str = ""):
        cfg = make_config(POLICY + extra)
        self.runtime = Runtime.build(cfg)
        self.store = MemoryStore()
        self.revocations = Revocations()
        self.tokens = BearerTokens(self.revocations)
        self.policy = composition.store_policy(cfg)

    @property
    def index(self) -> TokenIndex:
        return self.tokens.index

    def health(self):
        return health_of(self.revocations, [self.tokens.index], time.monotonic())


async def make_ctx(extra: str = "") -> tuple[World, TokenService]:
    w = World(extra)
    svc = TokenService(w.runtime.config, w.runtime.keyring, w.store)
    await svc.accounts.add_account(Account("bob", groups=("staff",)))
    await svc.accounts.add_account(Account("svc", kind="system"))
    return w, svc


async def load(w: World) -> None:
    await w.revocations.refresh(w.store)
    await w.index.refresh(w.store, 10.0, force=True)


def check(w: World, headers: dict[str, str], r: OriginalRequest | None = None,
          now: float | None = None) -> Credential | None:
    source = w.tokens.hooks(w.runtime).credential
    assert source is not None
    return source(headers, r or req(), time.time() if now is None else now, w.policy.checkable(w.health()))


def credential(w: World, token: str | None, r: OriginalRequest | None = None, now: float | None = None):
    """(session, what the logs say: "ok" or "token: why"), or None without a token; the type checked."""
    found = check(w, {} if token is None else {"Authorization": f"Bearer {token}"}, r, now)
    if found is None:
        return None
    assert found.source is Source.TOKEN and found.plain == (found.session is not None)
    return found.session, found.label


def answer(w: World, found, r: OriginalRequest | None = None, now: float | None = None) -> responses.Answer:
    """What the pipeline answers for this credential outcome: a (session, label) pair from
    `credential`, or (a cookie session, "ok")."""
    r = r or req()
    now = time.time() if now is None else now
    if found is None:
        cred = ABSENT
    else:
        session, label = found
        if label == "ok":
            cred = valid(session, Source.TOKEN if session.source == "token" else Source.COOKIE)
        elif label == STALE:
            cred = Credential(None, label.removeprefix("token: "), False, Status.UNCHECKABLE, Source.TOKEN)
        else:
            cred = Credential(None, label.removeprefix("token: "), False, Status.REFUSED, Source.TOKEN)
    # Traefik's convention: its 503s are 503s (to nginx they are 403s saying 503: test_server)
    pipeline = Authorizer(w.runtime, FORWARDED, redirects=True, revocations=w.revocations,
                          hooks=[w.tokens.hooks(w.runtime)], policy=w.policy)
    return pipeline.judge(r, {}, now, w.health(), credential=cred).answer


def stale(w: World, seconds: float) -> None:
    """As if the store last answered `seconds` ago and fails since."""
    for part in (w.revocations, w.index):
        part.last_ok = time.monotonic() - seconds
        part.last_error = "redis unreachable (ConnectionError)"


# --- the credential hook -----------------------------------------------------------------


async def test_no_authorization_header_leaves_the_cookie_to_decide():
    w, _ = await make_ctx()
    assert credential(w, None) is None
    assert check(w, {"Authorization": "Basic dTpw"}) is None


async def test_a_valid_token_gives_a_cached_principal_and_records_its_use():
    w, svc = await make_ctx()
    issued = await svc.issue(OPERATOR, "bob", name="laptop")
    await load(w)
    now = time.time()
    s1, why = credential(w, issued.token, now=now)
    assert why == "ok" and s1.sub == "bob" and s1.source == "token" and s1.groups == ("staff",)
    s2, _ = credential(w, issued.token, now=now + 1)
    assert s2 is s1  # the same object, so the decision memo can recognise it
    assert w.tokens.usage.pending == {issued.meta.id: now + 1}


@pytest.mark.parametrize("mutate, why", [
    (lambda t, m: "fa1_" + "A" * 10, "token: unsupported token version"),
    (lambda t, m: t[:-3], "token: truncated token"),
    (lambda t, m: m.add_caveat("path=/other").serialize(), "token: path not allowed by token"),
    (lambda t, m: m.add_caveat("method=POST").serialize(), "token: method not allowed by token"),
    (lambda t, m: m.add_caveat("host=other.test").serialize(), "token: host not allowed by token"),
    (lambda t, m: m.add_caveat("expires=1000").serialize(), "token: expired"),
    (lambda t, m: m.add_caveat("scope=all").serialize(), "token: unknown caveat"),
    (lambda t, m: mac.Macaroon(m.identifier, m.caveats, bytes(32)).serialize(), "token: bad signature"),
])
async def test_refused_tokens_say_why(mutate, why):
    w, svc = await make_ctx()
    issued = await svc.issue(OPERATOR, "bob")
    await load(w)
    bad = mutate(issued.token, mac.deserialize(issued.token))
    assert credential(w, bad) == (None, why)
    ans = answer(w, credential(w, bad))
    desc = why.removeprefix("token: ")
    assert ans.status == 401
    assert dict(ans.headers)["WWW-Authenticate"] == \
        f'Bearer realm="forwardauth", error="invalid_token", error_description="{desc}"'
    assert json.loads(ans.body) == {"error": "invalid_token", "error_description": f"The bearer token was refused: "
                                                                                 f"{desc}", "required_level": "password"}
    assert issued.token not in ans.body and issued.token[4:40] not in str(ans.headers)


async def test_revoked_locked_and_unknown_tokens_are_refused():
    w, svc = await make_ctx()
    a = await svc.issue(OPERATOR, "bob", name="a")
    b = await svc.issue(OPERATOR, "svc")
    unknown = mac.mint(w.runtime.keyring, mac.new_token_id(), mac.deserialize(a.token).caveats).serialize()
    await svc.revoke(OPERATOR, a.meta.id)
    await svc.lock(OPERATOR, "svc")
    await load(w)
    assert credential(w, a.token) == (None, "token: unknown or revoked")
    assert credential(w, b.token) == (None, "token: account missing or locked")
    assert credential(w, unknown) == (None, "token: unknown or revoked")


# --- grace and stale_sessions_up_to -------------------------------------------------------


async def test_within_the_grace_tokens_answer_from_memory_then_503():
    w, svc = await make_ctx()
    issued = await svc.issue(OPERATOR, "bob")
    await load(w)
    stale(w, 29.0)
    found = credential(w, issued.token)
    assert found[1] == "ok" and answer(w, found).status == 200
    stale(w, 31.0)
    found = credential(w, issued.token)
    assert found == (None, STALE)
    ans = answer(w, found)
    assert ans.status == 503 and dict(ans.headers)["Retry-After"] == "5"
    assert ans.body.startswith("503 Service Unavailable: the state store is unreachable for 31s (grace 30s); "
                               "bearer tokens are refused")


async def test_a_failing_token_index_alone_also_ends_the_grace():
    """Audit finding: a refresh loop dying of a non-store exception left unreachable_for() at 0 forever."""
    w, svc = await make_ctx()
    issued = await svc.issue(OPERATOR, "bob")
    await load(w)
    index = w.index
    index.last_ok, index.last_error = time.monotonic() - 31, "unexpected KeyError at store.py:1"
    assert w.revocations.unreachable_for() == 0.0
    assert credential(w, issued.token) == (None, STALE)


def cookie(level: str) -> Session:
    now = time.time()
    return Session(sid="s1", sub="carol", level=level, proofs={level: now}, iat=now, exp=now + 3600, seen=now)


@pytest.mark.parametrize("up_to, path, status", [
    (None, "/api/x", 503),  # unset: every cookie route that needs a level, after the grace
    (None, "/mfa/x", 503),
    (None, "/public/x", 200),  # anonymous routes still answer
    ("password", "/api/x", 200),  # up to password: still served
    ("password", "/mfa/x", 503),
    ("mfa", "/mfa/x", 200),
])
async def test_cookie_sessions_past_the_grace(up_to, path, status):
    extra = f"  stale_sessions_up_to: {up_to}\n" if up_to else ""
    w, _ = await make_ctx(extra)
    await load(w)
    stale(w, 31.0)
    ans = answer(w, (cookie("mfa"), "ok"), req(path))
    assert ans.status == status, ans
    if status == 503:
        assert "sessions on routes needing level" in ans.body
    stale(w, 29.0)
    assert answer(w, (cookie("mfa"), "ok"), req(path)).status == 200  # within the grace: all served


async def test_token_sessions_are_refused_past_the_grace_even_up_to_the_level():
    w, svc = await make_ctx("  stale_sessions_up_to: mfa\n")
    issued = await svc.issue(OPERATOR, "bob")
    await load(w)
    found = credential(w, issued.token)
    stale(w, 31.0)  # the credential was read just before the store went away
    assert answer(w, found).status == 503


# --- the token index -------------------------------------------------------------------------


async def test_token_index_loads_on_version_change_and_every_full_interval():
    store = MemoryStore()
    svc = TokenService(make_config(POLICY), Runtime.build(make_config(POLICY)).keyring, store)
    await svc.accounts.add_account(Account("bob"))
    index = TokenIndex()
    assert index.unreachable_for() == float("inf")  # never loaded: refused
    assert await index.refresh(store, full_every=3600.0) is True
    assert index.unreachable_for() == 0.0 and index.account("bob").active
    t = await svc.issue(OPERATOR, "bob")
    await index.refresh(store, full_every=3600.0)
    assert index.token(t.meta.id).name == "default"  # the version moved: reloaded
    await svc.lock(OPERATOR, "bob")
    await index.refresh(store, full_every=3600.0)
    assert not index.account("bob").active  # an account write moves the version too
    await svc.revoke(OPERATOR, t.meta.id)
    await index.refresh(store, full_every=3600.0)
    assert index.token(t.meta.id) is None  # revoked tokens leave the index


async def test_a_reload_that_changes_nothing_keeps_the_same_objects():
    """The fast path and the decision memo compare index objects by identity:
    an unchanged record keeps its object across full reloads, a changed one
    gets a new object."""
    store = MemoryStore()
    svc = TokenService(make_config(POLICY), Runtime.build(make_config(POLICY)).keyring, store)
    await svc.accounts.add_account(Account("bob"))
    await svc.accounts.add_account(Account("carol"))
    t = await svc.issue(OPERATOR, "bob")
    index = TokenIndex()
    await index.refresh(store, full_every=3600.0)
    meta, bob, carol = index.token(t.meta.id), index.account("bob"), index.account("carol")
    await index.refresh(store, full_every=3600.0, force=True)
    assert index.token(t.meta.id) is meta and index.account("bob") is bob and index.account("carol") is carol
    await svc.lock(OPERATOR, "carol")
    await index.refresh(store, full_every=3600.0)
    assert index.account("bob") is bob and index.account("carol") is not carol
    assert not index.account("carol").active


class Broken:
    """A store whose reads fail with `exc`."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    async def tokens_version(self):
        raise self.exc

    async def revocation_version(self):
        raise self.exc

    async def touch_tokens(self, used):
        raise self.exc


@pytest.mark.parametrize("exc, error", [
    (StoreUnavailable("redis unreachable (ConnectionError)"), "redis unreachable (ConnectionError)"),
    (KeyError("secret-looking-value"), "unexpected KeyError at test_token_decisions.py:"),
    (ValueError("fa1_notatoken"), "unexpected ValueError at test_token_decisions.py:"),
])
async def test_refresh_failures_of_any_kind_fail_closed_without_leaking(exc, error, caplog):
    index, rev = TokenIndex(), Revocations()
    index.last_ok = rev.last_ok = time.monotonic() - 40
    assert await index.refresh(Broken(exc), 10.0) is False  # type: ignore[arg-type]
    assert await rev.refresh(Broken(exc)) is False  # type: ignore[arg-type]
    for part in (index, rev):
        assert part.last_error.startswith(error)
        assert part.unreachable_for() >= 40
    assert "secret-looking-value" not in caplog.text and "fa1_notatoken" not in caplog.text


# --- the last-used recorder ---------------------------------------------------------------------


async def test_usage_recorder_keeps_the_batch_when_the_write_fails_and_retries():
    rec = UsageRecorder()
    rec.used("t1", 10.0)
    rec.used("t2", 11.0)
    for exc in (StoreUnavailable("down"), RuntimeError("bug")):
        await rec.flush(Broken(exc))  # type: ignore[arg-type]
        assert rec.pending == {"t1": 10.0, "t2": 11.0}
    rec.used("t1", 12.0)  # a later use meanwhile wins
    store = MemoryStore()
    svc = TokenService(make_config(POLICY), Runtime.build(make_config(POLICY)).keyring, store)
    await svc.accounts.add_account(Account("bob"))
    t = await svc.issue(OPERATOR, "bob")
    rec.pending[t.meta.id] = rec.pending.pop("t1")
    reported: list[dict] = []
    await rec.flush(store, reported.append)
    assert rec.pending == {} and (await svc.tokens.get_token(t.meta.id)).last_used == 12.0
    assert reported == [{t.meta.id: 12.0, "t2": 11.0}]
    await rec.flush(store, reported.append)
    assert len(reported) == 1  # nothing pending: no write, no report


async def test_the_fast_path_for_known_tokens_still_checks_everything_per_request():
    """A token accepted once is found by its header next time; expiry, caveats,
    revocation and the record/account are still checked on every request."""
    w, svc = await make_ctx()
    now = time.time()
    issued = await svc.issue(OPERATOR, "bob", name="fast", lifetime=120, now=now)
    narrow = mac.deserialize(issued.token).add_caveat("path=/api/read").serialize()
    await load(w)
    verifier = w.tokens.verifier(w.runtime.keyring)
    s, why = credential(w, narrow, req("/api/read/1"), now=now)
    assert why == "ok" and f"Bearer {narrow}" in verifier.by_header
    assert credential(w, narrow, req("/api/read/2"), now=now + 1)[0] is s  # known: same session
    assert credential(w, narrow, req("/api/write"), now=now + 1) == (None, "token: path not allowed by token")
    assert credential(w, narrow, req("/api/read/1", "POST"), now=now + 1)[1] == "ok"
    assert credential(w, narrow, req("/api/read/1"), now=now + 121) == (None, "token: expired")
    # Revoked: the snapshot says so before the index does.
    await svc.revoke(OPERATOR, issued.meta.id)
    await w.revocations.refresh(w.store)
    assert credential(w, narrow, req("/api/read/1"), now=now + 2) == (None, "token: revoked")
    # Locked: the index hands out a new account object.
    other = await svc.issue(OPERATOR, "bob", name="other", now=now)
    await load(w)
    assert credential(w, other.token, now=now + 3)[1] == "ok"
    assert credential(w, other.token, now=now + 3)[1] == "ok"
    await svc.lock(OPERATOR, "bob")
    await w.index.refresh(w.store, 10.0)
    assert credential(w, other.token, now=now + 4) == (None, "token: account missing or locked")
