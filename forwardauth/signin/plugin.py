"""Registers local sign-in with the core: the `local:` config section, the
/oauth2/ pages and the local authenticator of /oauth2/start, the audit of
denials, and the `forwardauth users` CLI group."""

from __future__ import annotations

from forwardauth.signin import cli, routes, settings  # noqa: F401 - imported for their registrations
