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
    """Layer each step on the previous one, appending a report per step to ``reports``.

    Consecutive uncached steps share one appliance session (:class:`_Session`); each still
    becomes its own layer and cache entry, under its own build key.
    """
    layout, cache = run.layout, run.cache
    added = Layers()
    parent = base.disk
    # What the parent is: as inspected on a fallback (below), else as the last record says.
    known: object = cache.inspection(parent.digest) or base.config.get("inspection")
    with _Session(run) as session:
        for number, step in enumerate(steps, 1):
            started = time.monotonic()
            canonical = customize.canonical_step(step, run.base_dir, layout.digest_key())
            key = identity(
                {"parent": parent.digest, "step": canonical, "code": customize.STEP_CODE_VERSION}
            )
            record: dict[str, Any] = {"key": key, "step": customize.manifest_step(step)}
            # Layers are not bit-identical: a concurrent builder of the same key waits here,
            # then finds the first one's layer in the cache (one layer per step, both refs).
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
                    network = any(customize.needs_network(s) for s in steps[number - 1 :])
                    chain = [*base.disks, *added.disks]
                    layer, outcome = session.run_step(chain, step, known, network=network)
                    added.passwords.update(outcome.pop("generated_passwords"))
                    record.update(outcome)
                    # Record first: the cache entry is what makes the key a hit, so a kill
                    # between the two must not leave a hit whose inspection is lost.
                    cache.save_record(key, outcome)
                    cache.put(key, layer)
            added.disks.append(layer)
            record["digest"] = layer.digest
            added.records.append(record)
            seconds = round(time.monotonic() - started, 3)
            reports.append(
                LayerReport(f"step {number}", layer.digest, hit is not None, seconds, note)
            )
            parent, known = layer, cache.inspection(layer.digest) or record.get("inspection")
    return added


class _Session:
    """One appliance for consecutive uncached steps, each captured as its own layer.

    The appliance writes to a scratch overlay on the last cached layer. After a step,
    ``g.sync()`` flushes the guest and qemu's qcow2 metadata, so a copy of the overlay is a
    consistent snapshot of every step so far; the step's layer is then the difference between
    that snapshot and the parent layer (:meth:`_capture`). A step on another parent (after a
    cache hit) or one that grows the disk (sizes are set before launch) starts a new session.
    """

    def __init__(self, run: StepRun) -> None:
        self.run = run
        self.workdir: Path | None = None
        self.handle: Any = None
        self.top: Descriptor | None = None  # the layer the appliance's disk now equals
        self.guest_os: appliance.InspectedOS | None = None
        self.network = False
        self.snapshots = 0

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_step(
        self, chain: Sequence[Descriptor], step: customize.Step, known: object, *, network: bool
    ) -> tuple[Descriptor, dict[str, Any]]:
        """Apply ``step`` on ``chain`` (launching if this session cannot go on) and commit it."""
        try:
            if (
                self.handle is None
                or self.top != chain[-1]
                or step.get("size") is not None
                or (network and not self.network)
            ):
                self.close()
                self._start(chain, step, known, network=network)
            assert self.handle is not None and self.guest_os is not None
            result = customize.apply_step(
                self.handle,
                step,
                self.guest_os,
                base_dir=self.run.base_dir,
                progress=self.run.progress,
            )
            after = customize.inspected_after(step, self.guest_os)
            if after is None:  # the step may have changed what inspection reads
                self.handle.umount_all()
                after = appliance.mount_os(self.handle, None, self.run.progress)
            self.guest_os = after
            self.handle.sync()
            layer = self._capture(chain[-1])
        except RuntimeError as exc:  # libguestfs reports guest-side failures as RuntimeError
            self.close()
            raise CustomizeError(f"customization failed: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return layer, {
            "inspection": after.to_json(),
            "messages": result.messages,
            "command_output": result.command_output,
            "generated_passwords": result.generated_passwords,
        }

    def _start(
        self, chain: Sequence[Descriptor], step: customize.Step, known: object, *, network: bool
    ) -> None:
        """Launch on a scratch overlay over ``chain``, grown if the step asks, OS mounted."""
        layout = self.run.layout
        parent = chain[-1]
        self.workdir = layout.new_temp()
        self.workdir.mkdir()
        # Each overlay names its parent by blob file name, which qemu resolves next to the file
        # it opened. While layers are built in workdir, symlinks of those names lead qemu
        # through the whole chain of blobs.
        for disk in chain:
            self._link(disk)
        overlay = self.workdir / "session.qcow2"
        parent_format = DISK_FORMATS[parent.media_type]
        qemu_img.create_overlay(overlay, hexpart(parent.digest), parent_format)
        grow_to = None
        if step.get("size") is not None:
            info = qemu_img.info(layout.blob_path(parent.digest), parent_format)
            grow_to = customize.grow_size(step, int(str(info["virtual-size"])))
        if grow_to is not None:
            qemu_img.resize(overlay, grow_to)
        self.handle = appliance.launch(
            [appliance.Drive(overlay, "qcow2")], network=network, progress=self.run.progress
        )
        self.network = network
        matching = appliance.recorded_match(self.handle, known)
        if grow_to is not None:
            grow.grow_filesystems(self.handle, matching.root if matching else None)
        self.guest_os = appliance.mount_os(self.handle, matching, self.run.progress)
        if self.guest_os is not matching:  # inspected: the next step here mounts from it
            self.run.cache.save_inspection(parent.digest, self.guest_os.to_json())
        self.top = parent

    def _capture(self, parent: Descriptor) -> Descriptor:
        """Commit the step just applied as a layer on ``parent``, holding only what it changed.

        The snapshot is the session's overlay (every step so far, on the session's first
        parent). Rebased without copying onto ``parent`` (the previous step's layer) it shows
        the same disk, since a cluster it does not hold was written by no step so far. A layer
        over the snapshot, safely rebased onto ``parent``, then receives exactly the clusters
        in which the two differ: qemu-img compares only those the snapshot holds.
        """
        assert self.workdir is not None and self.top is not None
        self.snapshots += 1
        snapshot = self.workdir / f"snapshot-{self.snapshots}.qcow2"
        shutil.copyfile(self.workdir / "session.qcow2", snapshot)
        parent_name, parent_format = hexpart(parent.digest), DISK_FORMATS[parent.media_type]
        if self.snapshots > 1:
            qemu_img.rebase(snapshot, parent_name, parent_format, safe=False)
        overlay = self.workdir / f"layer-{self.snapshots}.qcow2"
        qemu_img.create_overlay(overlay, snapshot.name, "qcow2")
        qemu_img.rebase(overlay, parent_name, parent_format, safe=True)
        compact = self.workdir / f"compact-{self.snapshots}.qcow2"  # docs/build.md
        qemu_img.compact_layer(overlay, compact, parent_name, parent_format)
        snapshot.unlink()
        layer = self.run.layout.commit_file(
            compact,
            file_digest(compact),
            MEDIA_DISK_QCOW2,
            annotations={PARENT_ANNOTATION: parent.digest},
        )
        self._link(layer)
        self.top = layer
        return layer

    def _link(self, disk: Descriptor) -> None:
        assert self.workdir is not None
        (self.workdir / hexpart(disk.digest)).symlink_to(self.run.layout.blob_path(disk.digest))

    def close(self) -> None:
        """Drop the appliance and the scratch files; committed layers stay.

        Every layer was captured after a sync and the session's overlay is thrown away, so
        the appliance is stopped without unmounting and syncing again (autosync off).
        """
        if self.handle is not None:
            try:
                self.handle.set_autosync(False)
            finally:
                self.handle.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.handle, self.workdir, self.top, self.guest_os, self.snapshots = (
            None,
            None,
            None,
            None,
            0,
        )
