"""Print what the reliability tests counted (kills survived, files refused, examples run)."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.reliability.figures import FIGURES, NOTES

# Keep hypothesis' working files out of the work tree (the examples database is off anyway).
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="imagekit-hypothesis-"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES and not NOTES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    for name in sorted(NOTES):
        terminalreporter.write_line(f"{name}: {NOTES[name]}")
