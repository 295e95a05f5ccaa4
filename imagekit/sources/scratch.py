"""A fresh disk from a local directory or tarball, so images can be built with no download."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
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
from imagekit.recipe import Recipe, ScratchSource

PARTITION_TABLES = {"gpt": "gpt", "mbr": "msdos"}
FILESYSTEMS = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "btrfs": 255}  # max label length
FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class ScratchSpec:
    """One partition spanning the disk, holding ``content`` (a directory or a tarball)."""

    size: int
    content: Path
    partition_table: str = "gpt"
    filesystem: str = "ext4"
    label: str = "root"
    format: str = "qcow2"

    def check(self) -> None:
        """Refuse bad settings before qemu-img or the appliance get to fail on them."""
        if self.partition_table not in PARTITION_TABLES:
            raise RecipeError(f"partition_table must be gpt or mbr, not {self.partition_table!r}")
        if self.filesystem not in FILESYSTEMS:
            raise RecipeError(
                f"filesystem must be one of {', '.join(FILESYSTEMS)}, not {self.filesystem!r}"
            )
        if not 0 < len(self.label) <= FILESYSTEMS[self.filesystem]:
            raise RecipeError(
                f"label {self.label!r} must be 1 to {FILESYSTEMS[self.filesystem]} characters "
                f"for {self.filesystem}"
            )
        if self.format not in FORMATS:
            raise RecipeError(f"format must be qcow2 or raw, not {self.format!r}")
        if self.size < 32 << 20:
            raise RecipeError(f"a scratch disk needs at least 32 MiB, not {self.size} bytes")
        if not self.content.exists():
            raise RecipeError(f"content {self.content} does not exist")
        if not self.content.is_dir():
            tarball_compression(self.content)


def make_scratch_disk(
    spec: ScratchSpec, dest: Path, *, progress: ProgressCallback = ignore_progress
) -> None:
    """Create ``dest`` in one appliance launch: partition, mkfs, unpack, fstab if missing."""
    spec.check()
    partial = dest.with_name(dest.name + ".part")
    try:
        qemu_img.create(partial, spec.format, spec.size)
    except ImagekitError as e:
        raise CustomizeError(f"cannot create the scratch disk: {e}") from e
    try:
        with tempfile.TemporaryDirectory(prefix="imagekit-scratch-") as tmp:
            tarball, compress = Path(tmp) / "content.tar", None
            if spec.content.is_dir():
                names = sorted(os.listdir(spec.content))
                pack([(spec.content / name, name) for name in names], tarball)
            else:
                tarball, compress = spec.content, tarball_compression(spec.content)
            progress(ProgressEvent("customize", f"filling a {spec.filesystem} scratch disk"))
            with appliance.launched(
                [appliance.Drive(partial, spec.format)], progress=progress
            ) as g:
                _fill(g, spec, tarball, compress)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _fill(g: Any, spec: ScratchSpec, tarball: Path, compress: str | None) -> None:
    device = g.list_devices()[0]
    g.part_disk(device, PARTITION_TABLES[spec.partition_table])
    part = g.list_partitions()[0]
    g.mkfs(spec.filesystem, part, label=spec.label)
    g.mount(part, "/")
    g.tar_in(str(tarball), "/", compress=compress)
    if not g.exists("/etc/fstab"):
        g.mkdir_p("/etc")
        check = 1 if spec.filesystem.startswith("ext") else 0
        g.write(
            "/etc/fstab", f"LABEL={spec.label} / {spec.filesystem} defaults 0 {check}\n".encode()
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
    spec = ScratchSpec(
        size=source.size,
        partition_table=source.partition_table,
        filesystem=source.filesystem,
        label=source.label,
        content=source.content,
        format=source.format,
    )
    temp = layout.new_temp("." + source.format)
    try:
        make_scratch_disk(spec, temp, progress=progress)
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
