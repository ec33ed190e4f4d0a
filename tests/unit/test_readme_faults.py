"""The README's "When things break" section backs each statement with a named test:
every test it names must exist, with the parametrize ids it names, so a renamed or
removed test cannot leave a promise without its proof.

A reference is `DIR/test_FILE.py::test_NAME[ID|ID]` (DIR under tests/), or `::test_NAME`
for the file named last, or a bare `DIR/test_FILE.py` (which becomes the file named last),
or a bare `[ID]` (a parameter of the test named last).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REF = re.compile(r"`((?:faults|unit|integration)/test_\w+\.py)?(?:::(test_\w+))?(?:\[([\w|-]+)\])?`")


def section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## When things break\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def references() -> list[tuple[str | None, str | None, list[str]]]:
    found: list[tuple[str | None, str | None, list[str]]] = []
    current, last = None, None
    for m in REF.finditer(section()):
        path, name, ids = m.groups()
        if path is None and name is None:
            if ids is not None:
                assert last is not None, f"{m.group(0)} names no test before it"
                found.append((current, last, ids.split("|")))
            continue
        current = path or current
        last = name if name is not None else (last if path is None else None)
        assert current is not None, f"{m.group(0)} names no file before it"
        found.append((current, name, ids.split("|") if ids else []))
    return found


def test_the_section_names_tests_and_each_exists():
    refs = references()
    assert len(refs) >= 15, refs
    for path, name, ids in refs:
        assert path is not None
        source = (REPO / "tests" / path).read_text()
        if name is None:
            continue
        assert re.search(rf"^(?:async )?def {name}\(", source, re.M), f"README names {path}::{name}: no such test"
        for wanted in ids:
            assert f'"{wanted}"' in source, f"README names {path}::{name}[{wanted}]: no such parameter id"


def test_every_dependency_has_its_paragraph():
    text = section()
    for heading in ("**Redis killed**", "**Redis Sentinel failover**", "**SQLite**", "**The audit log**",
                    "**The OpenID provider**", "**Keys**"):
        assert heading in text, heading
