"""Export: flatten an image's layer chain into one standalone file, or link a thin overlay."""

from __future__ import annotations

import os
from pathlib import Path

from imagekit.disk import qemu_img
from imagekit.errors import RecipeError
from imagekit.progress import ProgressCallback, ignore_progress

EXPORT_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx")


def export_disk(
    source: Path,
    source_format: str,
    dest: Path,
    *,
    disk_format: str = "qcow2",
    compress: bool = False,
    sparse: bool = True,
    link: bool = False,
    progress: ProgressCallback = ignore_progress,
) -> Path:
    """Write the chain topped by ``source`` to ``dest``, replaced only once complete."""
    if disk_format not in EXPORT_FORMATS:
        raise RecipeError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
    if compress and disk_format != "qcow2":
        raise RecipeError("--compress works with qcow2 only")
    if link and (disk_format != "qcow2" or compress):
        raise RecipeError("--link makes a qcow2 overlay; it takes no other format or --compress")
    dest = Path(dest)
    if dest.is_dir():
        raise RecipeError(f"{dest} is a directory; give a file name")
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        if link:
            qemu_img.create_linked_overlay(temp, source, source_format)
        else:
            qemu_img.convert(
                source,
                source_format,
                temp,
                disk_format,
                compress=compress,
                sparse=sparse,
                progress=progress,
            )
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    return dest
