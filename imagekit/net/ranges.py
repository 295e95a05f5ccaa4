"""The bookkeeping of a segmented download, apart from its I/O: which segments are complete,
how far each unfinished one got, the hash frontier, and how many connections are worth using.

The callers (:mod:`imagekit.net.segments`) hold one lock around every use.
"""

from __future__ import annotations

import collections

_GAIN = 1.25  # all connections must beat one by this much to be kept
MEASURE = 4 << 20  # what one connection fetches alone (after its first chunk) before the others


class Ramp:
    """How many workers may take segments: one, until it has fetched ``MEASURE`` bytes (or a
    whole segment) alone; then all; back to one if all together were not ``_GAIN`` times
    faster."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.allowed = 1
        self.single: float | None = None  # bytes/s of the first segment, alone
        self._since = self._have = 0.0
        self._left = connections  # segments to complete before judging the others
        self._judged = connections == 1

    def done(self, nbytes: int, seconds: float, have: int, now: float) -> None:
        """``nbytes`` took ``seconds`` (the first call: one connection alone; then each complete
        segment); ``have`` bytes are in so far, all workers together."""
        if self.single is None:
            self.single = nbytes / max(seconds, 1e-6)
            self.allowed = self.connections
            self._since, self._have = now, have
            return
        if self._judged:
            return
        self._left -= 1
        if self._left <= 0:
            together = (have - self._have) / max(now - self._since, 1e-6)
            if together < _GAIN * self.single:
                self.allowed = 1
            self._judged = True


class Segments:
    """Which segments are complete, how far each unfinished one got, and the hash frontier."""

    def __init__(self, total: int, size: int, done: frozenset[int]) -> None:
        self.total, self.size = total, size
        self.count = -(-total // size)
        self.done = set(done)
        self.got: dict[int, int] = {}  # unfinished segment -> bytes written from its start
        self.pending = collections.deque(i for i in range(self.count) if i not in done)
        self.have = sum(self.end(i) - self.start(i) for i in done)
        self._front = 0

    def start(self, i: int) -> int:
        return i * self.size

    def end(self, i: int) -> int:
        return min((i + 1) * self.size, self.total)

    def frontier(self) -> int:
        """Every byte below this offset is on disk."""
        while self._front < self.count and self._front in self.done:
            self._front += 1
        if self._front == self.count:
            return self.total
        return self.start(self._front) + self.got.get(self._front, 0)
