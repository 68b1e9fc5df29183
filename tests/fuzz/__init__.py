"""Property-based fuzzing of the pure parsers (hypothesis; atheris harnesses beside them).

Every test here takes its settings from `FUZZ` (below), a hypothesis profile picked by the
environment variable HYPOTHESIS_PROFILE:

    ci    (default) ~200 examples per test, no deadline: part of `make test`, a few seconds each
    medium 2,000 examples per test: a deeper look before a commit (minutes)
    long  100,000 examples per test: `scripts/fuzz-long.sh` (hours, not for CI)
    dev   20 examples: a quick look while editing a strategy

The profile is applied per test (a decorator), not loaded globally, so the unit tests'
own hypothesis settings are left alone. Randomness is hypothesis's own default: random
locally, derandomized where hypothesis detects CI (CI=true), so a CI run is reproducible.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,  # the machine is shared and loaded: wall-clock deadlines would be flaky
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,  # a failure prints the @reproduce_failure blob
)

settings.register_profile("mxhook-fuzz-ci", max_examples=200, **_COMMON)
settings.register_profile("mxhook-fuzz-medium", max_examples=2_000, **_COMMON)
settings.register_profile("mxhook-fuzz-long", max_examples=100_000, **_COMMON)
settings.register_profile("mxhook-fuzz-dev", max_examples=20, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "medium", "long", "dev"):
    PROFILE = "ci"

FUZZ = settings.get_profile(f"mxhook-fuzz-{PROFILE}")


def scaled(n: int) -> settings:
    """Settings for a test whose single example is expensive: `n` examples in ci (and dev: at
    most its count); medium and long keep their counts (a deep run is meant to be deep)."""
    if PROFILE in ("medium", "long"):
        return FUZZ
    return settings(FUZZ, max_examples=min(n, FUZZ.max_examples))
