"""Tests that need a real component (a tmpfs mount, atheris, strace) skip without it locally.

In CI (``CI`` set, as CI services do: ``CI=true``) a missing component fails the test instead, so
a green run never hides a check that did not happen.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(condition: bool, why: str) -> None:
    """Skip the calling test unless ``condition`` holds; under CI, fail it instead."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{why} (CI is set: a missing component fails instead of skipping)")
    pytest.skip(why)
