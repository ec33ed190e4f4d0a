"""Headless Chromium for browser tests: Debian's /usr/bin/chromium driven by Playwright.

Never `playwright install`: the browser is the distribution's package
(installed by scripts/install.sh --test). Each context gets a fresh
user-data dir, so no cookie, cache or profile leaks between tests. Test
host names (`*.test`) resolve to 127.0.0.1 inside the browser through
--host-resolver-rules, so pages can be reached by the names nginx serves.

Missing chromium or Playwright: skipped with the reason locally, a failure
under CI=true (harness.ci.missing_tool).

    from harness.browser import chromium, chromium_context, screenshot

    with chromium(hosts=["app.fa.test"]) as browser:      # one browser, a context per test
        page = browser.new_context().new_page()
    with chromium_context(tmp_path / "profile") as ctx:   # or a persistent profile dir of your own
        page = ctx.new_page()
        page.goto("http://app.test:8080/")
        screenshot(page, "home")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .ci import missing_tool

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


def require_chromium() -> None:
    """Skip (locally) or fail (CI=true) when chromium or Playwright is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        missing_tool(f"{CHROMIUM} not found (Debian package chromium: bash scripts/install.sh --test)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing_tool("Python package playwright not installed (bash scripts/install.sh --test)")


@contextlib.contextmanager
def chromium_context(user_data_dir: Path, *, resolve: str = "*.test", extra_args: tuple[str, ...] = (),
                     viewport: tuple[int, int] = (900, 820), timeout_ms: int = 15000) -> Iterator:
    """A Playwright BrowserContext of a real headless chromium with a new profile.

    `resolve`: host names (a Chromium host pattern) that resolve to 127.0.0.1.
    The browser process is closed on exit, whatever happened.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    user_data_dir = Path(user_data_dir)
    user_data_dir.mkdir(parents=True, exist_ok=True)
    args = list(FLAGS) + list(extra_args)
    if resolve:
        args.append(resolver_rules([resolve]))
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport={"width": viewport[0], "height": viewport[1]},
            ignore_default_args=["--enable-automation"],
        )
        ctx.set_default_timeout(timeout_ms)
        try:
            yield ctx
        finally:
            ctx.close()


def resolver_rules(hosts) -> str:  # noqa: ANN001 - iterable of host names or patterns
    """--host-resolver-rules mapping each host (or pattern like *.test) to 127.0.0.1."""
    return "--host-resolver-rules=" + ", ".join(f"MAP {h} 127.0.0.1" for h in hosts)


@contextlib.contextmanager
def chromium(hosts=("*.test",), *, extra_args: tuple[str, ...] = ()) -> Iterator:  # noqa: ANN001
    """A Playwright Browser of a real headless chromium; `browser.new_context()` per test.

    Playwright gives every launch a fresh temporary profile (user-data dir),
    removed when the browser closes. `hosts` resolve to 127.0.0.1.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    args = list(FLAGS) + list(extra_args)
    if hosts:
        args.append(resolver_rules(hosts))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args,
                                     ignore_default_args=["--enable-automation"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:  # noqa: ANN001 - a Playwright Page
    """Save a full-page PNG as test-artifacts/screenshots/<name>.png (gitignored); returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
