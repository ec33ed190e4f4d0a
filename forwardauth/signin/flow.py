"""Which local step, if any, a browser at /oauth2/start needs next. Pure: no I/O.

/oauth2/start (web.oauth2_start) computes the level the `rd` URL needs from
the policy and asks each authenticator in turn; the local one asks
`next_step`:

- a session one level below a level that a local factor proves (e.g. `mfa`
  by TOTP on top of `password`), from any source, upstream included: the
  TOTP challenge, or, when the user has no TOTP yet, the page explaining why
  and how to set one up;
- no session, or a local session whose level or freshness only a password
  gives: the password sign-in page (which comes back to /oauth2/start, so a
  TOTP level is reached in two steps);
- otherwise nothing local can help (None): the next authenticator (the
  upstream provider) or the "cannot be proven here" page.

New local factors add a Step and a branch here; the HTTP side maps each
step to a page.
"""

from __future__ import annotations

from enum import Enum

from forwardauth.core.levels import Levels
from forwardauth.core.session import Session


class Step(str, Enum):
    PASSWORD = "password"  # local password sign-in page
    TOTP = "totp"  # the TOTP challenge
    ENROL = "enrol"  # "this page needs a second factor; set one up"


def can_step_up(held: str, level: str, levels: Levels, password_level: str) -> bool:
    """May a local factor raise a session held at `held` to `level`?

    Only from the level just below `level` (or from `level` and above, to
    prove it again for a `max_age` rule), and never from below the password
    level: a factor adds to what the session proved, it does not replace the
    steps in between. Unknown levels: no.
    """
    lv, pw, h = levels.get(level), levels.get(password_level), levels.get(held)
    if lv is None or pw is None or h is None:
        return False
    return h.rank >= max(lv.rank - 1, pw.rank)


def next_step(
    session: Session | None,
    level: str,
    levels: Levels,
    *,
    local_password: bool,
    has_totp: bool,
    password_level: str,
    prefer_upstream: bool = False,
) -> Step | None:
    """The local step for a need of `level` that the session does not satisfy yet."""
    lv, pw = levels[level], levels[password_level]
    if session is not None and lv.local_factor == "totp":
        if can_step_up(session.level, level, levels, password_level):
            return Step.TOTP if has_totp else Step.ENROL
    if prefer_upstream or not local_password:
        return None
    if session is None:
        return Step.PASSWORD
    if session.source == "local" and pw.rank >= lv.rank:
        return Step.PASSWORD  # re-prove the password (a max_age rule)
    return None
