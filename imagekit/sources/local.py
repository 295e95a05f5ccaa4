"""A local disk image of the user's own: inspected like a download, recorded as unverified."""

from __future__ import annotations

import stat
from pathlib import Path

from imagekit import catalog, provenance
from imagekit.core.digest import identity
from imagekit.core.refs import parse_ref
from imagekit.disk import header
from imagekit.errors import RecipeError, UnsafeImageError
from imagekit.image import Image
from imagekit.oci.media import CREATED_ANNOTATION
from imagekit.sources.disk import DiskRequest, fetch_disk
from imagekit.sources.session import Session
from imagekit.verify.policy import UNVERIFIED, Expectation

SECTOR = 512  # the smallest raw disk, and the unit its size comes in


def import_file(session: Session, path: Path, ref: str, *, disk_format: str | None = None) -> Image:
    """Store a local qcow2/raw, inspected like a download, recorded unverified, tagged ``ref``.

    The blob is readable by no one the file itself was not readable by (oci.access).
    """
    parsed = parse_ref(ref)
    fmt = _import_format(path, disk_format)
    layout = session.layout
    with layout.shared_lock():
        request = DiskRequest(path.resolve().as_uri(), fmt, Expectation(UNVERIFIED))
        disk, info, _ = fetch_disk(session, request)
        config = {
            **provenance.base_config(parsed.name, parsed.tag, None),
            "source": {"kind": "local", "path": str(path.resolve())},
            "verification": provenance.unverified_record(),
            "disk": provenance.disk_record(disk, info),
        }
        layout.access.narrow(layout.blob_path(disk.digest), path.stat())
        manifest = layout.write_manifest(
            config, [disk], {CREATED_ANNOTATION: str(config["created"])}
        )
        key = identity({"import": disk.digest})
        return catalog.tag(layout, str(parsed), key, manifest, session.progress)


def _import_format(path: Path, disk_format: str | None) -> str:
    """The format ``path`` is stored as, every refusal naming ``path`` as the user gave it.

    A file with no known header is taken as raw only when the user says so (``--format raw``):
    any file is a "raw image" otherwise, a text file or ``/etc/shadow`` as well as a disk.
    """
    if disk_format is not None and disk_format not in header.SUPPORTED_FORMATS:
        raise RecipeError(f"--format {disk_format}: only qcow2 and raw images can be imported")
    _regular_file(path)
    detected = header.probe(path).format
    if disk_format is None and detected == "raw":
        raise RecipeError(
            f"{path} has no disk image header (qcow2 or other); if it is a raw disk image, "
            "import it with --format raw"
        )
    if detected not in header.SUPPORTED_FORMATS:
        raise RecipeError(f"{path} is {detected}; only qcow2 and raw images can be imported")
    fmt = disk_format or detected
    header.ensure_safe(path, fmt)
    size = path.stat().st_size
    if fmt == "raw" and (size < SECTOR or size % SECTOR):
        raise UnsafeImageError(
            f"refusing {path} as a raw disk: it is {size} bytes, and a raw disk image is a whole "
            f"number of {SECTOR}-byte sectors, at least one"
        )
    return fmt


def _regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise RecipeError(f"cannot import {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise RecipeError(f"cannot import {path}: it is a directory; name the disk image file")
    if not stat.S_ISREG(mode):
        raise RecipeError(
            f"cannot import {path}: it is not a regular file (a device, pipe or socket); "
            "copy the image to a file first"
        )
