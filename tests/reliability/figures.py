"""Numbers the reliability tests saw, printed at the end of the run (docs/reliability.md).

Tests add to these counters as they go; ``conftest.pytest_terminal_summary`` prints them, so the
figures in the doc can be checked against any run. With ``IMAGEKIT_FIGURES=PATH`` set, the same
figures and the run's outcome counts are also written to PATH as JSON, which
``scripts/reliability_figures.py`` turns into the doc's "last run" column.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

FIGURES: Counter[str] = Counter()
NOTES: dict[str, str] = {}
OUTCOMES = ("failed", "passed", "skipped", "deselected", "xfailed", "xpassed", "error")


def add(name: str, amount: int = 1) -> None:
    FIGURES[name] += amount


def note(name: str, text: str) -> None:
    NOTES[name] = text


def write(path: Path, *, outcomes: dict[str, int], seconds: float, args: list[str]) -> None:
    """The figures, notes and outcome counts of this run, as JSON."""
    record: dict[str, Any] = {
        "figures": dict(sorted(FIGURES.items())),
        "notes": dict(sorted(NOTES.items())),
        "outcomes": {k: outcomes[k] for k in OUTCOMES if outcomes.get(k)},
        "seconds": round(seconds, 2),
        "args": args,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
