"""Progress reporting as plain events, so the library stays UI-free and callers plug in a UI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work. ``done``/``total`` are bytes (or units) when known."""

    stage: str  # resolve | fetch | verify | inspect | store | customize | export | done
    message: str
    done: int | None = None
    total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """The default callback: library calls are silent unless the caller asks otherwise."""
