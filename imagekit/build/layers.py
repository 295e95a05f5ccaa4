"""Customization layers: one qcow2 overlay per step, keyed by its inputs, one launch when new.

A layer's build key is the identity of its parent disk's digest, the canonical step and the
code version that applies it. A key already built resolves to its layer without launching
anything. Each overlay names its parent by the parent blob's file name, so no byte of the base
is copied and the chain stays valid wherever the store lives.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit import customize
from imagekit.build.cache import BuildCache
from imagekit.core.digest import file_digest, hexpart, identity
from imagekit.disk import qemu_img
from imagekit.errors import CustomizeError
from imagekit.guest import appliance, grow
from imagekit.image import Image
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import DISK_FORMATS, MEDIA_DISK_QCOW2, PARENT_ANNOTATION
from imagekit.progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from imagekit.build.remote import RemoteCache


@dataclass(frozen=True)
class LayerReport:
    """What one layer of a build cost: ``cached`` layers made no launch; ``note`` says where a
    layer came from when not from here (a remote cache), or why a remote entry was refused."""

    name: str
    digest: str
    cached: bool
    seconds: float
    note: str = ""


@dataclass
class Layers:
    """The layers a build added on its base, what each step recorded, and passwords made."""

    disks: list[Descriptor] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepRun:
    """Where the steps run: the store, its build cache, and the folder local paths start from."""

    layout: Layout
    cache: BuildCache
    base_dir: Path
    use_cache: bool
    progress: ProgressCallback
    remote: RemoteCache | None = None  # looked up after a local miss, before any launch


def apply_steps(
    run: StepRun, base: Image, steps: Sequence[customize.Step], reports: list[LayerReport]
) -> Layers:
    """Layer each step on the previous one, appending a report per step to ``reports``."""
    layout, cache = run.layout, run.cache
    added = Layers()
    parent = base.disk
    for number, step in enumerate(steps, 1):
        started = time.monotonic()
        canonical = customize.canonical_step(step, run.base_dir, layout.digest_key())
        key = identity(
            {"parent": parent.digest, "step": canonical, "code": customize.STEP_CODE_VERSION}
        )
        record: dict[str, Any] = {"key": key, "step": customize.manifest_step(step)}
        # Layers are not bit-identical: a concurrent builder of the same key waits here, then
        # finds the first one's layer in the cache (one layer per step, both refs).
        with layout.digest_lock(f"build-{hexpart(key)}"):
            hit = cache.get(key) if run.use_cache else None
            note = ""
            if hit is None and run.use_cache and run.remote is not None:
                found = run.remote.find(key, parent)  # into the local cache when accepted
                hit, note = found.layer, found.note
            if hit is not None:
                layer = hit
                record.update(cache.record(key))
            else:
                run.progress(ProgressEvent("customize", f"step {number}/{len(steps)}"))
                layer, outcome = _run_step(run, [*base.disks, *added.disks], step)
                added.passwords.update(outcome.pop("generated_passwords"))
                record.update(outcome)
                # Record first: the cache entry is what makes the key a hit, so a kill between
                # the two must not leave a hit whose inspection and messages are lost.
                cache.save_record(key, outcome)
                cache.put(key, layer)
        added.disks.append(layer)
        record["digest"] = layer.digest
        added.records.append(record)
        seconds = round(time.monotonic() - started, 3)
        reports.append(LayerReport(f"step {number}", layer.digest, hit is not None, seconds, note))
        parent = layer
    return added


def _run_step(
    run: StepRun, chain: Sequence[Descriptor], step: customize.Step
) -> tuple[Descriptor, dict[str, Any]]:
    """One launch: overlay on the chain's top, grow if asked, apply, compact, hash, commit."""
    layout = run.layout
    parent = chain[-1]
    workdir = layout.new_temp()
    workdir.mkdir()
    try:
        # Each overlay names its parent by blob file name, which qemu resolves next to the file
        # it opened. While the new layer is built in workdir, symlinks of those names lead qemu
        # through the whole chain of blobs.
        for disk in chain:
            (workdir / hexpart(disk.digest)).symlink_to(layout.blob_path(disk.digest))
        overlay = workdir / "layer.qcow2"
        parent_format = DISK_FORMATS[parent.media_type]
        qemu_img.create_overlay(overlay, hexpart(parent.digest), parent_format)
        grow_to = None
        if step.get("size") is not None:
            info = qemu_img.info(layout.blob_path(parent.digest), parent_format)
            grow_to = customize.grow_size(step, int(str(info["virtual-size"])))
        if grow_to is not None:
            qemu_img.resize(overlay, grow_to)
        handle = appliance.launch(
            [appliance.Drive(overlay, "qcow2")],
            network=customize.needs_network(step),
            progress=run.progress,
        )
        try:
            if grow_to is not None:
                grow.grow_filesystems(handle)
            inspected = appliance.mount_inspected(handle)
            result = customize.apply_step(
                handle, step, base_dir=run.base_dir, progress=run.progress
            )
            handle.shutdown()
        finally:
            handle.close()
        compact = workdir / "compact.qcow2"  # the step's own data only: docs/build.md
        qemu_img.compact_layer(overlay, compact, hexpart(parent.digest), parent_format)
        layer = layout.commit_file(
            compact,
            file_digest(compact),
            MEDIA_DISK_QCOW2,
            annotations={PARENT_ANNOTATION: parent.digest},
        )
    except RuntimeError as exc:  # libguestfs reports guest-side failures as RuntimeError
        raise CustomizeError(f"customization failed: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return layer, {
        "inspection": inspected.to_json(),
        "messages": result.messages,
        "command_output": result.command_output,
        "generated_passwords": result.generated_passwords,
    }
