"""A small flock helper that survives the lock file being replaced under it.

flock locks an inode, not a path: if another process (gc, sweeping lock files nobody holds:
:func:`remove_unheld`) unlinks the lock file between our open() and flock(), we would hold a
lock nobody else sees. So after locking we re-check that the path still names the inode we
locked, and retry if not.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from imagekit.errors import StoreError


class FileLock:
    """An advisory lock on ``path``: ``shared=True`` for readers/adders, False for exclusive use."""

    def __init__(self, path: Path, *, shared: bool = False, timeout: float | None = None) -> None:
        self.path = path
        self.shared = shared
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                self._lock(fd, mode, deadline)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self._fd = fd
                    return
            except FileNotFoundError:
                pass  # unlinked after we locked it: try again with the new file
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _lock(self, fd: int, mode: int, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(fd, mode)
            return
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"timed out waiting for lock {self.path}; another imagekit process "
                        "holds it (wait for it to finish, or check for a stuck process)"
                    ) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def remove_unheld(path: Path, *, dry_run: bool = False) -> bool:
    """Unlink the lock file ``path`` if nobody holds it; False when held, gone or not ours.

    We take the lock ourselves (non-blocking) and unlink while holding it. A process that
    opened the file but has not locked it yet then locks the unlinked inode, sees in
    :meth:`FileLock.acquire` that the path no longer names it, and retries on a fresh file, so
    mutual exclusion holds. ``dry_run`` only says whether it would go.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # gone, a symlink, or not ours to open: leave it
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held: in use
        locked, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (locked.st_dev, locked.st_ino) != (now.st_dev, now.st_ino):
            return False  # replaced meanwhile: the new file is somebody's fresh lock
        if not dry_run:
            os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
