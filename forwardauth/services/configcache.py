"""The YAML value of a large config file, kept between runs as JSON.

Why: a generated policy of 10,000 rules is an 800 KB YAML file, and reading
it (libyaml, PyYAML's constructor, core.yamlsafe's expansion bound) takes
about 1.7 s of CPU; the same value written as JSON reads in 15 ms. So once a
large file has been read and found valid (`check`, `serve`, a reload), its
value is kept, and the next run over the same bytes skips YAML.

What makes that safe:
- A kept value answers only for the exact bytes it came from: its name is the
  SHA-256 of the file's bytes and of the versions that read them (this
  module's format, forwardauth, PyYAML). Any edit is a different name.
- The value is validated in full every time (core.config.validate), as a
  value read from YAML is: a kept value can never be a config that
  validation would refuse.
- Only what the same user could write is read, as ssh does with its keys: the
  directory and the file must be owned by this process's user and writable by
  no one else (created 0700 and 0600; a symlink is not followed). Anything
  else is ignored, and the YAML is read as if nothing were kept.
- A value is kept only when JSON gives back exactly the same value (a YAML
  date, set, binary or a non-text key is not kept).
- Only files of LARGE_CONFIG bytes or more are kept (a small file parses in
  milliseconds), and at most KEEP of them, the least recently used removed.
  A kept value holds what the file holds, secrets written inline included:
  readable by the same user as the file, and gone when KEEP newer ones are.

Where: $FORWARDAUTH_CACHE_DIR, else $XDG_CACHE_HOME/forwardauth, else
~/.cache/forwardauth. FORWARDAUTH_CACHE_DIR set and empty turns it off. A
directory that cannot be made or written turns it off quietly: the cache
only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from forwardauth import __version__
from forwardauth.core.config import Config, SectionParser, decode, read_file, read_yaml, validate

FORMAT = 1
LARGE_CONFIG = 256 * 1024  # bytes (about 2,000 rules)
KEEP = 4  # kept values, the least recently used removed
MAX_KEPT_BYTES = 64 << 20  # a kept file larger than this is not read


def load_config(path: str | Path, sections: Mapping[str, SectionParser] | None = None) -> Config:
    """core.config.load_config, with the YAML value of a large file kept and reused."""
    data = read_file(path)
    text = decode(data, path)
    where = cache_dir() if len(data) >= LARGE_CONFIG else None
    if where is None:
        return validate(read_yaml(text, str(path)), str(path), sections)
    name = key(data)
    raw = _read(where, name)
    if raw is not None:
        return validate(raw, str(path), sections)
    raw = read_yaml(text, str(path))
    cfg = validate(raw, str(path), sections)  # kept only once valid
    _write(where, name, raw)
    return cfg


def cache_dir() -> Path | None:
    """Where values are kept; None when turned off or there is no home."""
    env = os.environ.get("FORWARDAUTH_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "forwardauth"
    home = os.environ.get("HOME")
    return Path(home) / ".cache" / "forwardauth" if home else None


def key(data: bytes) -> str:
    """The name a file's value is kept under: every input to the value is in it."""
    h = hashlib.sha256(f"forwardauth config cache {FORMAT} {__version__} {yaml.__version__}\0".encode())
    h.update(data)
    return h.hexdigest()


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(where: Path, name: str) -> Any:
    """The kept value, or None (absent, not trusted, or not whole)."""
    try:
        dst = os.lstat(where)
        if not stat.S_ISDIR(dst.st_mode) or not _owned(dst):
            return None
        fd = os.open(where / f"{name}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or not _owned(st) or st.st_size > MAX_KEPT_BYTES:
                return None
            value = json.loads(f.read())
        with contextlib.suppress(OSError):
            os.utime(where / f"{name}.json")  # recently used: pruned last
        return value
    except (OSError, ValueError):  # a torn or foreign file: read the YAML
        return None


def _write(where: Path, name: str, raw: Any) -> None:
    try:
        text = json.dumps(raw, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if json.loads(text) != raw:  # a key that was not text, or 1.0 vs 1 in a key
            return
    except (TypeError, ValueError, RecursionError):  # a date, a set, bytes, NaN: not JSON
        return
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        dst = os.lstat(where)
        if not stat.S_ISDIR(dst.st_mode) or not _owned(dst):
            return
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, where / f"{name}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _prune(where)
    except OSError:
        return


def _prune(where: Path) -> None:
    kept = []
    for p in where.glob("*.json"):
        with contextlib.suppress(OSError):
            kept.append((p.stat().st_mtime, p))
    kept.sort(reverse=True)
    for _, p in kept[KEEP:]:
        with contextlib.suppress(OSError):
            p.unlink()
