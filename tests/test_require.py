"""A missing real component skips a test locally and fails it in CI (tests/require.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.require import in_ci, require


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", True), ("", False), ("0", False)])
def test_ci_is_any_value_but_empty_zero_or_false(
    monkeypatch: pytest.MonkeyPatch, value: str, ci: bool
) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_require_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    require(True, "present")
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        require(False, "no widget")
    monkeypatch.setenv("CI", "true")
    require(True, "present")
    with pytest.raises(pytest.fail.Exception, match=r"no widget .*CI is set"):
        require(False, "no widget")


def test_a_disk_full_run_without_tmpfs_fails_under_ci(tmp_path: Path) -> None:
    """The tmpfs tests through pytest, with a ``mount`` that refuses: skipped, or failed in CI."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mount = bindir / "mount"
    mount.write_text("#!/bin/sh\necho 'mount: permission denied' >&2\nexit 32\n")
    mount.chmod(0o755)
    test = "tests/reliability/test_disk_full.py::test_pull_on_a_full_disk_is_a_typed_error"
    outcomes = {}
    for ci in ("", "true"):
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "CI": ci}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        outcomes[ci] = (done.returncode, done.stdout)
    assert outcomes[""][0] == 0 and "1 skipped" in outcomes[""][1], outcomes[""][1]
    assert outcomes["true"][0] == 1, outcomes["true"][1]
    assert "cannot mount a tmpfs here" in outcomes["true"][1]
    assert "1 error" in outcomes["true"][1]  # the fixture fails: an error, never a skip
