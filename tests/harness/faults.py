"""Helpers of the fault suite (tests/faults): what a decision answered,
directly or through nginx, as one status (to nginx a 503 is a 403 saying
503; the shipped snippet answers 503), and nginx in front of a forwardauth."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .ci import missing_tool
from .client import request
from .proxies import MissingTool, require, start_proxy
from .tokens import APP


def status(reply) -> int:
    """The status as the client of nginx sees it: /auth/nginx's 403 saying 503 is a 503."""
    if reply.status == 403 and reply.header("X-Forwardauth-Status") == "503":
        return 503
    return reply.status


def decided(fa, path: str, token: str | None = None, cookie: str | None = None) -> int:
    return status(fa.decide(path, token, cookie=cookie))


def through(nginx, path: str, token: str | None = None, cookie: str | None = None) -> int:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"forwardauth={cookie}"
    return request(nginx.port, path, host=f"{APP}:{nginx.port}", headers=headers, timeout=15).status


def nginx_for(workdir, fa_port: int, app_port: int):
    try:
        require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    return start_proxy("nginx", workdir, fa_port, app_port, APP, "forwardauth")


@contextlib.contextmanager
def loop_disk(d: Path, size_mb: int = 8) -> Iterator[Path]:
    """A small ext4 filesystem mounted at `d` (a loop-mounted image): it fills up
    for real, and its files can be made immutable (chattr +i) under a process
    holding them open. Needs root and mkfs.ext4 (the missing-tool rule)."""
    image = d.parent / f"{d.name}.img"
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    p = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if p.returncode == 0:
        p = subprocess.run(["mount", "-o", "loop", str(image), str(d)], capture_output=True, text=True)
    if p.returncode != 0:
        image.unlink(missing_ok=True)
        missing_tool(f"a loop-mounted ext4 for the disk faults needs root and mkfs.ext4: {p.stderr.strip()}")
    try:
        yield d
    finally:
        for f in d.iterdir():
            subprocess.run(["chattr", "-i", str(f)], capture_output=True)
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(d: Path) -> Path:
    """Fill the filesystem of `d` to the last byte; the filler file (delete it to free the space)."""
    filler = d / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):  # the last partial block
        while True:
            f.write(b"\0" * 512)
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0")
    return filler


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of forwardauth's /metrics (0 when absent)."""
    text = request(port, "/metrics", host="auth.test").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
