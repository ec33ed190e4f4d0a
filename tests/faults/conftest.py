"""The fault suite: real processes (forwardauth, nginx, Redis, Sentinel, the
OpenID provider), a dependency broken while decisions flow, and the
documented behaviour asserted (README: "When things break"). Helpers are in
harness/faults.py and harness/flow.py."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _logs_on_failure(request, tmp_path):
    """When a fault test fails, the tails of the forwardauth logs under its tmp dir."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    for log in sorted(tmp_path.rglob("forwardauth*.log")):
        print(f"\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}")
