"""A fresh disk from a local directory or tarball, so images can be built with no download."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from imagekit import provenance
from imagekit.core.digest import file_digest, tree_digest
from imagekit.disk import qemu_img
from imagekit.errors import CustomizeError, ImagekitError, RecipeError
from imagekit.guest import appliance
from imagekit.guest.tarball import pack, tarball_compression
from imagekit.image import Image
from imagekit.oci.layout import Layout
from imagekit.oci.media import CREATED_ANNOTATION, DISK_MEDIA
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress
from imagekit.recipe import PARTITION_TABLES, Recipe, ScratchSource


def make_scratch_disk(
    source: ScratchSource, dest: Path, *, progress: ProgressCallback = ignore_progress
) -> None:
    """Create ``dest`` in one appliance launch: partition, mkfs, unpack, fstab if missing.

    ``source``'s settings were checked when its recipe loaded (imagekit.recipe's key table).
    """
    partial = dest.with_name(dest.name + ".part")
    try:
        qemu_img.create(partial, source.format, source.size)
    except ImagekitError as e:
        raise CustomizeError(f"cannot create the scratch disk: {e}") from e
    try:
        with tempfile.TemporaryDirectory(prefix="imagekit-scratch-") as tmp:
            tarball, compress = Path(tmp) / "content.tar", None
            if source.content.is_dir():
                names = sorted(os.listdir(source.content))
                pack([(source.content / name, name) for name in names], tarball)
            else:
                tarball, compress = source.content, tarball_compression(source.content)
            progress(ProgressEvent("customize", f"filling a {source.filesystem} scratch disk"))
            with appliance.launched(
                [appliance.Drive(partial, source.format)], progress=progress
            ) as g:
                _fill(g, source, tarball, compress)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _fill(g: Any, source: ScratchSource, tarball: Path, compress: str | None) -> None:
    device = g.list_devices()[0]
    g.part_disk(device, PARTITION_TABLES[source.partition_table])
    part = g.list_partitions()[0]
    g.mkfs(source.filesystem, part, label=source.label)
    g.mount(part, "/")
    g.tar_in(str(tarball), "/", compress=compress)
    if not g.exists("/etc/fstab"):
        g.mkdir_p("/etc")
        check = 1 if source.filesystem.startswith("ext") else 0
        g.write(
            "/etc/fstab",
            f"LABEL={source.label} / {source.filesystem} defaults 0 {check}\n".encode(),
        )


SCRATCH_CODE_VERSION = "1"


def scratch_identity(source: ScratchSource) -> dict[str, Any]:
    """What the scratch disk is made of: its content's digest and every disk setting."""
    if not source.content.exists():
        raise RecipeError(f"scratch content {source.content} is neither a directory nor a tarball")
    return {
        "content": tree_digest(source.content),
        "size": source.size,
        "partition_table": source.partition_table,
        "filesystem": source.filesystem,
        "label": source.label,
        "format": source.format,
    }


def scratch_image(layout: Layout, recipe: Recipe, progress: ProgressCallback) -> Image:
    """Make the recipe's scratch disk and store it (untagged) with its provenance."""
    source = recipe.source
    assert isinstance(source, ScratchSource)
    temp = layout.new_temp("." + source.format)
    try:
        make_scratch_disk(source, temp, progress=progress)
        disk = layout.commit_file(temp, file_digest(temp), DISK_MEDIA[source.format])
    finally:
        temp.unlink(missing_ok=True)
    config = {
        **provenance.base_config(recipe.name, recipe.version, recipe.arch),
        "source": {"kind": "scratch", **scratch_identity(source)},
        "verification": provenance.unverified_record(),
        "disk": {"digest": disk.digest, "size": disk.size, "format": source.format},
    }
    manifest = layout.write_manifest(config, [disk], {CREATED_ANNOTATION: config["created"]})
    return Image.from_descriptor(layout, manifest)
