"""The static checks, run with every test run (the README's test command runs them):

- mypy on forwardauth/ ([tool.mypy] in pyproject.toml: every function typed);
- ruff on forwardauth/, tests/ and bench/ (the rules and why: [tool.ruff] in pyproject.toml);
- import-linter's contracts ([tool.importlinter]: core imports no other layer and no aiohttp,
  every import points down, parts never import one another).

Each must report nothing. The tools come with `pip install -e '.[test]'`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = BIN / argv[0]
    if not tool.exists():
        found = shutil.which(argv[0])
        if found is None:
            pytest.fail(f"{argv[0]} is not installed (pip install -e '.[test]')")
        tool = Path(found)
    return subprocess.run([str(tool), *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_mypy_finds_nothing():
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found"), proc.stdout


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "forwardauth", "tests", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_are_kept():
    proc = _run("lint-imports", "--no-cache")
    assert proc.returncode == 0 and " kept, 0 broken." in proc.stdout, proc.stdout + proc.stderr
