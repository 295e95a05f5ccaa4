"""Write a large file back to disk while it arrives, and let go of the pages that are on disk.

Written through the page cache, a download of several GB would fill as many pages as it is
large: the fsync before commit would wait for all of them, other files' pages would be pushed
out, and on a VM whose memory the hypervisor backs lazily every fresh page costs a fault on the
host (2-3 ms per MiB where the benchmarks run). So every ``EVERY`` bytes a thread fdatasyncs
the file and drops the pages below the mark it was given, clean by then: the next writes reuse
them, and the fsync before commit waits for the tail alone. An error here is left for that
fsync to report.
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import TracebackType

EVERY = 32 << 20


class WriteBack:
    """The write-back thread of one open file, started by the first ``EVERY`` bytes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._mark = 0  # below it, every byte is written and read no more: it may be dropped
        self._dropped = 0
        self._done = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def written(self, upto: int) -> None:
        """Every byte below ``upto`` is in the file and will not be read back from the cache."""
        if upto - self._mark < EVERY:
            return
        self._mark = upto
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imagekit-writeback")
            self._thread.daemon = True
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            mark = self._mark
            if mark > self._dropped:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                    os.posix_fadvise(self._fd, 0, mark, os.POSIX_FADV_DONTNEED)
                self._dropped = mark
            if self._done:
                return

    def stop(self) -> None:
        """Finish the write-back asked for: the file descriptor may be closed afterwards."""
        self._done = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> WriteBack:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
