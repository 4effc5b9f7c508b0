"""Shared test configuration: seeded Hypothesis profiles and shared-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Replayable: derandomize makes every Hypothesis run draw the same examples;
# a failure prints the example and `@reproduce_failure` blob to replay it.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    derandomize=False,
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SHARED_MODEL = SHARED / "models" / "neox-mini"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set GRASSBUNDLE_SHARED)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_model() -> Path:
    """``../shared/models/neox-mini``; the test is skipped when it is absent."""
    if not (SHARED_MODEL / "config.json").is_file():
        pytest.skip(f"shared model {SHARED_MODEL} is absent (set GRASSBUNDLE_SHARED)")
    return SHARED_MODEL
