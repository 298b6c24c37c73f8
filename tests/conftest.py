"""Shared test configuration: hypothesis profiles for the hostile-input suite and a count of its cases.

The profiles are registered, not loaded: each suite picks its own with ``settings(parent=...)``, so the
defaults of the other suites are left alone. ``gbs_hostile`` is the small profile of the default run;
``gbs_hostile_slow`` the exhaustive one, used by the tests marked ``slow``.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "gbs_hostile",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "gbs_hostile_slow",
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

_HOSTILE_CASES: Counter[str] = Counter()


@pytest.fixture(scope="session")
def hostile_cases() -> Counter[str]:
    """Counts of the hostile-input cases run, by area of the API; printed at the end of the session."""
    return _HOSTILE_CASES


def pytest_terminal_summary(terminalreporter) -> None:
    if not _HOSTILE_CASES:
        return
    total = sum(_HOSTILE_CASES.values())
    parts = ", ".join(f"{area} {count}" for area, count in sorted(_HOSTILE_CASES.items()))
    terminalreporter.write_sep("-", f"hostile inputs: {total} cases ({parts})")
