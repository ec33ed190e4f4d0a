"""The decision itself: a pure function of the request, the session and the policy.

No I/O and no clock of its own (`now` is passed in), so every outcome can be
tested without a server and `forwardauth explain` gives the exact answer the
server would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from forwardauth.core.durations import format_duration
from forwardauth.core.levels import Levels
from forwardauth.core.policy import Action, Policy, Rule
from forwardauth.core.request import OriginalRequest
from forwardauth.core.session import Session


class Outcome(str, Enum):
    ALLOW = "allow"  # signed in and the rule is satisfied
    ANONYMOUS = "anonymous"  # the rule lets everyone through
    UNAUTHENTICATED = "unauthenticated"  # not signed in
    INSUFFICIENT_LEVEL = "insufficient_level"  # signed in, level too low or too old
    FORBIDDEN = "forbidden"  # signed in, but not one of the users/groups, or method not allowed
    DENIED = "denied"  # a deny rule, or no rule and default deny


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    rule: Rule | None = None
    required_level: str | None = None
    max_age: float | None = None
    session: Session | None = None
    # Until when the same inputs give the same outcome: an allow under a rule
    # with max_age lapses when the proof gets too old. Everything else here
    # depends only on the request, the session and the policy.
    until: float = math.inf

    @property
    def allowed(self) -> bool:
        return self.outcome in (Outcome.ALLOW, Outcome.ANONYMOUS)


def decide(
    req: OriginalRequest, session: Session | None, policy: Policy, levels: Levels, now: float
) -> Decision:
    """The decision for every reading of the request (paths.py: each path an
    app could route, each method it could act on), the strictest one winning:
    what the app does with the request is allowed only if every way it could
    read it is allowed."""
    rule = policy.match(req.host, req.path, req.method, req.client)
    decision = decide_for_rule(rule, req.method, session, policy, levels, now)
    if len(req.paths) == 1 and len(req.methods) == 1:
        return decision
    seen = {(id(rule), req.method)}
    for method in req.methods:
        for path in req.paths:
            other_rule = policy.match(req.host, path, method, req.client)
            if (id(other_rule), method) in seen:
                continue
            seen.add((id(other_rule), method))
            other = decide_for_rule(other_rule, method, session, policy, levels, now)
            notes = ([f"path read as {path}"] if path != req.path else []) + (
                [f"method read as {method}"] if method != req.method else [])
            decision = stricter(decision, replace(other, reason=f"{other.reason} ({', '.join(notes)})"), levels)
    return decision


# How far from "through" each outcome is; the larger one wins between readings.
_RANK = {Outcome.ANONYMOUS: 0, Outcome.ALLOW: 1, Outcome.UNAUTHENTICATED: 2, Outcome.INSUFFICIENT_LEVEL: 3,
         Outcome.FORBIDDEN: 4, Outcome.DENIED: 5}
_ASKS = (Outcome.UNAUTHENTICATED, Outcome.INSUFFICIENT_LEVEL)


def stricter(a: Decision, b: Decision, levels: Levels) -> Decision:
    """The stricter of two decisions on readings of one request.

    A refusal beats an allow, a deny beats a level. When both ask for a
    sign-in or step-up, the answer asks for the higher level and the shorter
    freshness, so that one sign-in satisfies every reading (levels only rise,
    and a proof counts for the levels below it). Between two allows the
    remembered answer lapses at the earlier `until`."""
    if _RANK[b.outcome] > _RANK[a.outcome]:
        a, b = b, a
    if a.outcome in _ASKS and b.outcome in _ASKS:
        required = a.required_level
        if required is None or (b.required_level is not None and not levels.at_least(required, b.required_level)):
            required = b.required_level
        ages = [m for m in (a.max_age, b.max_age) if m is not None]
        return replace(a, required_level=required, max_age=min(ages) if ages else None)
    if a.outcome is Outcome.ALLOW and b.allowed:
        if b.outcome is Outcome.ALLOW and b.required_level is not None and (
                a.required_level is None or not levels.at_least(a.required_level, b.required_level)):
            a, b = b, a  # the allow under the rule that asks more is the one to explain
        return replace(a, until=min(a.until, b.until))
    return a


def decide_for_rule(
    rule: Rule | None, method: str, session: Session | None, policy: Policy, levels: Levels, now: float
) -> Decision:
    """The outcome once the rule is known (shared by the server and explain)."""
    if rule is None:
        if policy.default is Action.ANONYMOUS:
            return Decision(Outcome.ANONYMOUS, "no rule matched; policy.default is anonymous", session=session)
        return Decision(Outcome.DENIED, "no rule matched; policy.default is deny", session=session)
    if rule.action is Action.ANONYMOUS:
        return Decision(Outcome.ANONYMOUS, f"{rule.label} allows anonymous access", rule, session=session)
    if rule.action is Action.DENY:
        return Decision(Outcome.DENIED, f"{rule.label} denies", rule, session=session)

    required = rule.required_level(method)
    if required is None:
        return Decision(Outcome.FORBIDDEN, f"{rule.label} has no level for method {method}", rule, session=session)
    if session is None:
        return Decision(Outcome.UNAUTHENTICATED, "not signed in", rule, required, rule.max_age)
    if rule.users is not None or rule.groups is not None:
        in_users = rule.users is not None and session.sub in rule.users
        in_groups = rule.groups is not None and not rule.groups.isdisjoint(session.groups)
        if not (in_users or in_groups):
            return Decision(
                Outcome.FORBIDDEN,
                f"{session.sub!r} is not one of the users or groups of {rule.label}",
                rule,
                required,
                rule.max_age,
                session,
            )
    if not levels.at_least(session.level, required):
        return Decision(
            Outcome.INSUFFICIENT_LEVEL,
            f"{rule.label} needs level {required}; the session has {session.level}",
            rule,
            required,
            rule.max_age,
            session,
        )
    until = math.inf
    if rule.max_age is not None:
        last = session.last_proven(levels, required)
        if last is None or last < now - rule.max_age:
            return Decision(
                Outcome.INSUFFICIENT_LEVEL,
                f"{rule.label} needs level {required} proven within {format_duration(rule.max_age)}",
                rule,
                required,
                rule.max_age,
                session,
            )
        until = last + rule.max_age
    return Decision(Outcome.ALLOW, f"{rule.label} is satisfied at level {session.level}", rule, required,
                    rule.max_age, session, until)
