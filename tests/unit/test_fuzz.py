"""Fuzzing in the normal suite: every target of harness/fuzz.py for a few seconds, fixed seed.

A target may raise only the exception types it documents (Target.allowed);
anything else fails here with the shrunk input. The long run is bench/fuzz.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from harness import fuzz

TARGETS = {t.name: t for t in fuzz.targets()}
CI_EXAMPLES = 300


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name):
    target = TARGETS[name]

    @settings(max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(target.strategy)
    def run(value):
        crash = fuzz.run_one(target, value)
        if crash is not None:
            raise crash

    run()
