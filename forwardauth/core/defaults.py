"""The embedded default config (forwardauth/default.yaml): local use with no file.

`forwardauth serve` without -c, and the `users` commands likewise, run on it:
local accounts, SQLite state and development keys under a data directory,
the keys made on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from forwardauth.core import keyring
from forwardauth.core.config import Config

log = logging.getLogger("forwardauth")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default.yaml"


def embedded_default(var_dir: Path, parse: Callable[[str, str], Config]) -> Config:
    """The built-in config, with dev keys generated on first start. `parse`
    is the config parser with every part's sections (composition.parse_config)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    keys = var_dir / "keys.json"
    if not keys.exists():
        keyring.generate().save(keys)
        log.warning("generated development keys", extra={"fields": {"file": str(keys)}})
    text = DEFAULT_CONFIG.read_text().replace("{var}", str(var_dir.resolve()))
    return parse(text, f"{DEFAULT_CONFIG} (embedded default)")
