"""The decision itself: a pure function of the request, the session and the policy.

No I/O and no clock of its own (`now` is passed in), so every outcome can be
tested without a server and `forwardauth explain` gives the exact answer the
server would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from forwardauth.durations import format_duration
from forwardauth.levels import Levels
from forwardauth.policy import Action, Policy, Rule
from forwardauth.request import OriginalRequest
from forwardauth.session import Session


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
    rule = policy.match(req.host, req.path, req.method, req.client)
    return decide_for_rule(rule, req.method, session, policy, levels, now)


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
