"""Reading a file the user or a recipe names, bounded: evidence, keys, recipes are small.

Every such file is read whole into memory, so each read has a size cap, and only regular files
are read: ``/dev/zero`` would never end, a FIFO may never start, and a directory is a typo.
The refusal is one typed line naming the file; the caller picks the error class (what a bad
file means for it: a usage error, a failed verification, a failed fetch).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from imagekit.errors import ImagekitError, RecipeError

EVIDENCE_MAX = 16 << 20  # checksum files, signatures, key files, upstream metadata
TEXT_MAX = 1 << 20  # recipes and the like: hand-written TOML


@contextmanager
def open_regular(
    path: Path, what: str, *, error: type[ImagekitError] = RecipeError
) -> Iterator[BinaryIO]:
    """``path`` opened for reading, refused unless it is a regular file (symlinks followed).

    Opened non-blocking, so a FIFO with no writer is refused instead of hanging the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise error(_unreadable(path, what, exc)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"cannot read {what} {path}: it is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise error(
                f"cannot read {what} {path}: it is not a regular file (a device, pipe or "
                "socket); save it to a file first"
            )
        os.set_blocking(fd, True)
        stream = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with stream:
        yield stream


def read_capped(
    path: Path, limit: int, what: str, *, error: type[ImagekitError] = RecipeError
) -> bytes:
    """The bytes of regular file ``path``, refused (``error``) when larger than ``limit``."""
    with open_regular(path, what, error=error) as stream:
        try:
            data = stream.read(limit + 1)
        except OSError as exc:
            raise error(_unreadable(path, what, exc)) from exc
    if len(data) > limit:
        raise error(
            f"cannot read {what} {path}: it is larger than {limit} bytes, more than a {what} "
            "holds; check that it is the right file"
        )
    return data


def _unreadable(path: Path, what: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"cannot read {what} {path}: it does not exist"
    return f"cannot read {what} {path}: {exc.strerror or exc}"
