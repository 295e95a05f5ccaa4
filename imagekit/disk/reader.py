"""What every disk-format reader shares: bounded reads of an open file and the header record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import UnsafeImageError

MAX_NAME = 1023  # qemu's limit for a qcow2 backing file name
ADVICE = (
    "imagekit only stores self-contained, unencrypted disks: use the distribution's plain qcow2 "
    "or raw image, or flatten this one with `qemu-img convert -O qcow2` where you trust it"
)


@dataclass(frozen=True)
class DiskHeader:
    """What an image's own header says about it, read without letting qemu parse it."""

    format: str  # by magic; "raw" means no known magic
    virtual_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    details: dict[str, object] = field(default_factory=dict)  # header fields for the manifest


class Reader:
    """Bounded reads from an open image; reading past the end means a cut or lying header."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.size = os.fstat(fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        return os.pread(self.fd, min(length, self.size - offset), offset)

    def exact(self, offset: int, length: int, what: str) -> bytes:
        data = self.read(offset, length)
        if len(data) < length:
            raise self.truncated(what, offset + length)
        return data

    def truncated(self, what: str, end: int) -> UnsafeImageError:
        return UnsafeImageError(
            f"refusing {self.path}: truncated header: its {what} reaches byte {end} but the file "
            f"has {self.size} bytes; the download is incomplete or the file is not a disk image"
        )

    def malformed(self, what: str) -> UnsafeImageError:
        return UnsafeImageError(
            f"refusing {self.path}: malformed header: {what}; qemu would reject it too, so the "
            "file is corrupt or crafted. Fetch it again or report it upstream"
        )


def text(data: bytes) -> str:
    """Names exactly as stored, so NULs and odd bytes survive to be refused, not hidden."""
    return data.decode("utf-8", "surrogateescape")
