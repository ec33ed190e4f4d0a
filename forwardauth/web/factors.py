"""The ways to prove a level that parts offer: `Factor`, and what it is asked with.

/oauth2/start (web.oauth2_start) asks each factor's `start` in turn; the
sign-in part's sign-in and step-up pages list each factor's `offer`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from forwardauth.core.session import Session


@dataclass(frozen=True)
class Need:
    rd: str  # validated target
    level: str
    max_age: float | None
    session: Session | None  # the current, valid session, if any
    via: str | None = None  # the factor the person chose on the sign-in page (`via=` of /oauth2/start)


Page = Literal["sign_in", "step_up"]


@dataclass(frozen=True)
class Offer:
    """A button on the sign-in or step-up page: another way to prove the level."""

    label: str  # "Sign in with your organisation's account", "Use your security key", ...
    url: str


@dataclass(frozen=True)
class Factor:
    """A way to prove a level, contributed by a part.

    `start`: asked by /oauth2/start in turn; answers (a redirect to its page,
    to the provider, ...) when it can prove `need`, else None.
    `offer`: the button it shows on the sign-in or step-up page for `need`,
    or None. Neither does I/O it cannot afford on every page view."""

    name: str  # what `via=` names ("local", "upstream", ...)
    start: Callable[[web.Request, Need], Awaitable[web.StreamResponse | None]] | None = None
    offer: Callable[[web.Request, Need, Page], Offer | None] | None = None
