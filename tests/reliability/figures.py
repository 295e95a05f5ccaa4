"""Numbers the reliability tests saw, printed at the end of the run (docs/reliability.md).

Tests add to these counters as they go; ``conftest.pytest_terminal_summary`` prints them, so the
figures in the doc can be checked against any run.
"""

from __future__ import annotations

from collections import Counter

FIGURES: Counter[str] = Counter()
NOTES: dict[str, str] = {}


def add(name: str, amount: int = 1) -> None:
    FIGURES[name] += amount


def note(name: str, text: str) -> None:
    NOTES[name] = text
