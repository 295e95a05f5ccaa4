"""The one temp file + fsync + rename: after a kill -9 at any instant a path holds its old bytes
or its new bytes, never a mix, and a rename that returned is on disk (the directory is synced).

Callers that must say what a failed write means for them (a store, a download) catch OSError and
use :func:`disk_full` to tell a full disk from other failures.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int | None = None) -> None:
    """Create ``path`` (it must not exist) with ``data``, flushed to disk before returning.

    ``mode`` is exact when given (a store's owner-only files must not depend on the umask);
    by default the file is 0644 less the umask.
    """
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644 if mode is None else 0o600
    )
    with os.fdopen(fd, "wb") as f:
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def temp_beside(path: Path) -> Path:
    """A fresh hidden name in ``path``'s directory: same filesystem, so rename is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def replace_file(
    path: Path, data: bytes, *, temp: Path | None = None, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data``: temp (beside it unless given), fsync, rename, fsync dir."""
    temp = temp or temp_beside(path)
    try:
        write_new(temp, data, mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def create_file(
    path: Path, data: bytes, *, temp: Path | None = None, mode: int | None = None
) -> bool:
    """Create ``path`` with ``data`` unless it exists; False when another writer was first.

    link(2) never replaces, so two racing creators cannot clobber each other.
    """
    if path.exists():
        return False
    temp = temp or temp_beside(path)
    try:
        write_new(temp, data, mode)
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def commit(temp: Path, dest: Path) -> None:
    """Move a finished file into place: fsync its bytes, rename, fsync the directory."""
    with temp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, dest)
    fsync_dir(dest.parent)


def disk_full(error: OSError) -> bool:
    """Whether a failed write failed for want of space (or quota)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
