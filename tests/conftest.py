"""Hypothesis profiles for the whole suite.

``default`` is CI's fast run (each test's own ``max_examples``). ``long`` is the fuzz run
(one command: ``scripts/fuzz.sh``, i.e. ``HYPOTHESIS_PROFILE=long pytest``): only property
tests are collected, and every one's example count, explicit ``@settings(max_examples=...)``
included, is multiplied by ``SORAP2P_FUZZ_FACTOR`` (default 10), without deadlines.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

LONG_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("long", max_examples=1_000, deadline=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)


def pytest_report_header() -> str:
    return f"hypothesis profile: {PROFILE}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PROFILE != "long":
        return
    factor = int(os.environ.get("SORAP2P_FUZZ_FACTOR", "10"))
    keep, drop = [], []
    for item in items:
        fn = getattr(item, "obj", None)
        if not getattr(fn, "is_hypothesis_test", False):
            drop.append(item)
            continue
        keep.append(item)
        own = getattr(fn, "_hypothesis_internal_use_settings", None) or settings()
        fn._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
            own,
            max_examples=max(own.max_examples * factor, settings().max_examples),
            deadline=None,
            suppress_health_check=LONG_CHECKS,
        )
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
