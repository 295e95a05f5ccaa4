"""Thin layers: a layer stores at most 1.1x the bytes its step changed, and the same bytes twice.

The yardstick is tests/layerbytes.py (512-byte sectors that differ from the parent and hold
data). Most tests write known changes with qemu-io through ``qemu_img.create_overlay`` and
``compact_layer``, the two calls a step makes around its launch; one runs a real step.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.core.digest import file_digest
from imagekit.disk import header, qemu_img
from imagekit.store import Store
from tests import guestimage
from tests.events import Events
from tests.guestimage import GuestImage
from tests.layerbytes import (
    TEN_OPERATIONS,
    Write,
    changed_bytes,
    metadata_like,
    write_with_qemu_io,
)

guest_image = guestimage.guest_image  # the session fixture, shared with test_customize.py

SIZE = 256 << 20


def writes(seed: int, kind: str) -> list[Write]:
    """Writes around four places, as a step's metadata (1-4 KiB records) or file data are.

    Each write starts on a 4 KiB boundary, the block size of ext4 and XFS as distributions make
    them (a 1 KiB-block filesystem is the real step's case below); incompressible data comes in
    whole blocks, as a file's contents do. ``files`` writes 256 KiB runs: over a MiB in all.
    """
    rng = random.Random(seed)
    sizes = {"metadata": (1024, 2048, 4096), "random": (4096, 8192, 16384), "files": (256 << 10,)}
    out = []
    for region in (1 << 20, 40 << 20, 130 << 20, 200 << 20):
        for _ in range(24 if kind != "files" else 3):
            size = rng.choice(sizes[kind])
            offset = region + rng.randrange(0, 1 << 20, 4096)
            data = rng.randbytes(size) if kind == "random" else metadata_like(rng, size)
            out.append(Write(offset, data))
    return out


def make_parent(directory: Path) -> Path:
    """A 256 MiB qcow2 whose first 208 MiB hold random data, so every change really differs."""
    parent = directory / "parent.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(parent), str(SIZE)], check=True)
    fill = random.Random(0).randbytes(1 << 20)
    write_with_qemu_io(parent, [Write(mib << 20, fill) for mib in range(208)])
    return parent


def layer_with(directory: Path, parent: Path, changes: list[Write], name: str) -> Path:
    """A step's two qemu-img calls around ``changes``, written by qemu-io instead of a guest."""
    overlay, layer = directory / f"{name}-overlay.qcow2", directory / f"{name}.qcow2"
    qemu_img.create_overlay(overlay, parent.name, "qcow2")
    write_with_qemu_io(overlay, changes, zero=[150 << 20])  # zeroed: an L2 entry, no data
    qemu_img.compact_layer(overlay, layer, parent.name, "qcow2")
    return layer


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_parent(tmp_path_factory.mktemp("parent"))


@pytest.mark.parametrize("kind", ["metadata", "random", "files"])
def test_a_layer_stores_at_most_1_1x_what_changed(parent: Path, kind: str, tmp_path: Path) -> None:
    os.link(parent, tmp_path / parent.name)  # a file, not a symlink: ensure_safe wants one
    layer = layer_with(tmp_path, parent, writes(1, kind), "layer")

    changed = changed_bytes(layer, parent)

    assert changed.data > 150 << 10  # the writes really differ from the parent
    assert changed.zeroed >= 64 << 10  # the zeroed range, and padding that zeroed sectors
    assert layer.stat().st_size <= 1.1 * changed.data
    if kind == "files":  # over COMPRESS_BELOW: stored uncompressed, so chain reads stay fast
        assert layer.stat().st_size > max(changed.data, qemu_img.COMPRESS_BELOW)
    compare = ["qemu-img", "compare", "-q", str(tmp_path / "layer-overlay.qcow2"), str(layer)]
    assert subprocess.run(compare).returncode == 0  # compacting kept every byte the guest sees


def test_the_same_changes_on_the_same_parent_give_the_same_layer(
    parent: Path, tmp_path: Path
) -> None:
    os.link(parent, tmp_path / parent.name)  # a file, not a symlink: ensure_safe wants one
    changes = writes(2, "metadata")

    first = layer_with(tmp_path, parent, changes, "first")
    second = layer_with(tmp_path, parent, changes, "second")

    assert file_digest(first) == file_digest(second)


def test_layers_and_step_overlays_pass_the_safety_checks(parent: Path, tmp_path: Path) -> None:
    os.link(parent, tmp_path / parent.name)  # a file, not a symlink: ensure_safe wants one
    layer = layer_with(tmp_path, parent, writes(3, "metadata"), "layer")
    overlay = tmp_path / "layer-overlay.qcow2"

    stored = header.ensure_safe(layer, "qcow2", allowed_backing_dir=tmp_path)
    during_step = header.ensure_safe(overlay, "qcow2", allowed_backing_dir=tmp_path)

    assert stored.backing_file == parent.name and stored.backing_format == "qcow2"
    assert stored.details["cluster_bits"] == 11  # 2 KiB for a 256 MiB disk
    assert stored.details["incompatible_features"] == []  # any qemu reads the stored layer
    assert during_step.details["incompatible_features"] == ["extended_l2"]
    assert qemu_img.check(layer, "qcow2")["check-errors"] == 0


def test_the_cluster_size_keeps_the_fixed_tables_smallest() -> None:
    sizes = {gib: qemu_img.layer_cluster_size(int(gib * (1 << 30))) for gib in (0.25, 2, 20, 4096)}

    assert sizes == {0.25: 2048, 2: 4096, 20: 8192, 4096: 65536}


@dataclass(frozen=True)
class Step:
    layer: Path
    parent: Path
    launches: int


@pytest.fixture(scope="module")
def step(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """One real step (one launch) on the session's busybox guest, imported into a store."""
    store = Store(tmp_path_factory.mktemp("thin") / "store")
    store.import_file(guest_image.path, "guest:1", disk_format="qcow2")
    events = Events()
    image = store.customize("guest:1", TEN_OPERATIONS, tag="guest:thin", progress=events).image
    base, layer = image.disks
    return Step(store.blob_path(layer.digest), store.blob_path(base.digest), events.launches)


@pytest.mark.guestfs
def test_a_real_step_layer_stores_at_most_1_1x_what_it_changed(step: Step) -> None:
    changed = changed_bytes(step.layer, step.parent)

    assert step.launches == 1
    assert changed.data > 0
    assert step.layer.stat().st_size <= 1.1 * changed.data
