"""Progress reporting as plain events, so the library stays UI-free and callers plug in a UI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

_METER_INTERVAL = 0.1  # seconds between byte-progress events of one transfer


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


class Meter:
    """Byte progress of one blob, at most ~10 events a second (UIs must not be the bottleneck)."""

    def __init__(self, callback: ProgressCallback, stage: str, label: str, total: int) -> None:
        self.callback, self.stage, self.label, self.total = callback, stage, label, total
        self._last = -_METER_INTERVAL

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= _METER_INTERVAL:
            self._last = now
            self.callback(ProgressEvent(self.stage, self.label, done, self.total))
