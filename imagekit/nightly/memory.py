"""How many builds the machine's memory holds at once: each appliance or VM needs its share.

A build may launch the libguestfs appliance (``guest.appliance.MEMSIZE_MIB``) plus qemu's own
overhead, or boot its ``[test]`` VM or kickstart installer with the memory the recipe gives
them. Builds take their share of ``MemAvailable`` before they start and give it back after; one
that needs more than there is runs alone rather than never.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagekit.guest.appliance import MEMSIZE_MIB
from imagekit.recipe import KickstartSource, Recipe

MIB = 1 << 20
QEMU_OVERHEAD = 256 * MIB  # qemu's own pages, page tables and the libguestfs daemon's buffers


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` in bytes (what can be used without swapping); 4 GiB if unreadable."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def memory_need(recipe: Recipe) -> int:
    """Bytes one build of ``recipe`` may hold at once: its largest appliance or VM."""
    need = MEMSIZE_MIB * MIB
    if recipe.test is not None and recipe.test.boot:
        need = max(need, recipe.test.memory)
    if isinstance(recipe.source, KickstartSource):
        need = max(need, recipe.source.memory)
    return need + QEMU_OVERHEAD


class MemoryBudget:
    """A counting semaphore in bytes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    @contextmanager
    def share(self, need: int) -> Iterator[None]:
        need = min(need, self.total)  # more than there is: wait until it runs alone
        with self._changed:
            self._changed.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield
        finally:
            with self._changed:
                self._free += need
                self._changed.notify_all()
