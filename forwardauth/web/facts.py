"""What a sign-in or step-up page knows of the request it answers, and its audit line.

Shared by the parts' pages (signin, webauthn): parts never import each other,
so the one copy lives here, below them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from forwardauth.core.session import Session
from forwardauth.services.account_names import account_key
from forwardauth.services.audit import request_id
from forwardauth.web.context import AppContext


@dataclass(frozen=True)
class Facts:
    now: float
    client: str | None
    request_id: str
    session: Session | None

    @property
    def user(self) -> str | None:
        """The account the session belongs to (a username, or "<source>:<sub>")."""
        return account_key(self.session) if self.session is not None else None


def facts(request: web.Request, ctx: AppContext) -> Facts:
    now = time.time()
    return Facts(now, ctx.client(request), request_id(request.headers), ctx.current_session(request, now))


def audit(ctx: AppContext, f: Facts, event: str, *, user: str | None = None, target: str | None = None,
          level: str | None = None, reason: str | None = None) -> None:
    """One audit line for a page's event: the target's host and path (never its query)."""
    host = path = None
    if target:
        parts = urlsplit(target)
        host, path = parts.hostname, parts.path or "/"
    ctx.audit.emit(event, user=user, client=f.client, host=host, path=path, level=level, reason=reason,
                   request_id=f.request_id)
