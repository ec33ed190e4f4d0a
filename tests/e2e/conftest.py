"""End-to-end fixtures shared by the browser tests.

- timings: lines collected by tests, printed and written to test-artifacts/timings.txt
- page: a page of a new headless Chromium (harness.browser) with a fresh
  profile; when the test fails, a screenshot in test-artifacts/screenshots/
  and the logs of the module's `stack` servers (anything with .proc or .log_path)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from harness.browser import chromium_context, screenshot

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def timings():
    """Timing lines ("what: figures") a test appends; written to test-artifacts/timings.txt at the end."""
    lines: list[str] = []
    yield lines
    if not lines:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "timings.txt"
    # Each line is "what: figures"; a new figure replaces the old line for the same "what".
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    new = [f"{ln} [{stamp}]" for ln in lines]
    keys = {ln.split(":", 1)[0] + ":" for ln in new}
    old = path.read_text().splitlines() if path.exists() else []
    path.write_text("\n".join([ln for ln in old if not ln.startswith(tuple(keys))] + new) + "\n")


@pytest.fixture
def page(request, tmp_path):
    """A page in a new headless Chromium with a fresh profile (no cookies); on failure, a
    screenshot (test-artifacts/screenshots/) and the logs of the module's `stack` servers."""
    with chromium_context(tmp_path / "chromium-profile", timeout_ms=30_000) as context:
        pg = context.pages[0] if context.pages else context.new_page()
        pg.set_default_navigation_timeout(30_000)
        yield pg
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                print(f"\n--- screenshot: {screenshot(pg, re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name))}"
                      f" (page was {pg.url})")
            except Exception as exc:  # noqa: BLE001 - the browser may be what failed
                print(f"\n--- no screenshot: {exc!r}")
            if "stack" in request.fixturenames:
                for server in vars(request.getfixturevalue("stack")).values():
                    proc = getattr(server, "proc", server)
                    if hasattr(proc, "log_path") and hasattr(proc, "log"):
                        print(f"\n--- {proc.log_path} ---\n{proc.log(4000)}")
