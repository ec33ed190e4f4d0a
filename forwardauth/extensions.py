"""The parts that plug into the core: each registers its config section
(config.SECTION_PARSERS), routes (server.APP_HOOKS) and CLI commands
(cli.COMMANDS) when imported. Imported lazily by the core, so the core
modules never import the parts and there is no import cycle.

To add a part: write its module with a `register()`-free import-time
registration and add one import line below.
"""

from __future__ import annotations

_loaded = False


def load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for name in PARTS:
        importlib.import_module(name)


# One line per part, e.g. "forwardauth.oidc.settings".
PARTS: list[str] = [
    "forwardauth.start",
    "forwardauth.signout",
    "forwardauth.oidc.settings",
    "forwardauth.oidc.handlers",
    "forwardauth.signin.plugin",
    "forwardauth.tokens.plugin",
]
