"""Print what the reliability tests counted (kills survived, files refused, examples run).

With ``IMAGEKIT_FIGURES=PATH`` the figures and outcome counts are also written to PATH as JSON.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.reliability import figures

# Keep hypothesis' working files out of the work tree (the examples database is off anyway).
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="imagekit-hypothesis-"))
_STARTED: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _STARTED.append(time.monotonic())


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    target = os.environ.get("IMAGEKIT_FIGURES")
    if target:
        stats = terminalreporter.stats
        figures.write(
            Path(target),
            outcomes={k: len(stats.get(k, [])) for k in figures.OUTCOMES},
            seconds=time.monotonic() - (_STARTED[0] if _STARTED else time.monotonic()),
            args=[str(a) for a in config.invocation_params.args],
        )
    if not figures.FIGURES and not figures.NOTES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(figures.FIGURES):
        terminalreporter.write_line(f"{name}: {figures.FIGURES[name]}")
    for name in sorted(figures.NOTES):
        terminalreporter.write_line(f"{name}: {figures.NOTES[name]}")
