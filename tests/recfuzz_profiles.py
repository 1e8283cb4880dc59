"""Hypothesis profiles of the record fuzz test (tests/test_record_fuzz.py).

`HYPOTHESIS_PROFILE=fuzz` (what `make fuzz` sets) generates many more records;
anything else keeps the bounded, derandomized set `make test` runs. The profiles
are registered under names of their own and applied to the generator only, never
loaded globally, so they leave other modules' hypothesis settings alone.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("recfuzz-default", max_examples=150, derandomize=True, deadline=None, database=None,
                          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
settings.register_profile("recfuzz-fuzz", max_examples=3_000, deadline=None, database=None,
                          phases=[Phase.generate], suppress_health_check=list(HealthCheck))


def profile() -> settings:
    """The record fuzzer's settings for the profile named by $HYPOTHESIS_PROFILE."""
    name = "recfuzz-fuzz" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "recfuzz-default"
    return settings.get_profile(name)
