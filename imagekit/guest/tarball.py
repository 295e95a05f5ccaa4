"""Host files as a tarball for the appliance's ``tar_in``: numeric owners, modes and links kept."""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import Path

from imagekit.errors import RecipeError

COMPRESSION = {".tar": None, ".tar.gz": "gzip", ".tgz": "gzip", ".tar.xz": "xz"}
COMPRESSION |= {".tar.bz2": "bzip2"}


def tarball_compression(path: Path) -> str | None:
    """tar_in's ``compress`` argument for the tarball ``path``."""
    for suffix, compress in COMPRESSION.items():
        if path.name.endswith(suffix) and path.is_file():
            return compress
    raise RecipeError(
        f"content {path} must be a directory or a .tar, .tar.gz, .tgz, .tar.xz or .tar.bz2 file"
    )


def pack(
    entries: Iterable[tuple[Path, str]], tarball: Path, *, owner: tuple[int, int] | None = None
) -> None:
    """Tar each (path, name) recursively with numeric owners (or ``owner``), modes and links."""

    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        if owner is not None:
            info.uid, info.gid = owner
        return info

    with tarfile.open(tarball, "w", format=tarfile.GNU_FORMAT) as tar:
        for path, name in entries:
            tar.add(path, arcname=name, filter=numeric)
