"""A store on a small tmpfs that fills in the middle of a download."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagekit
from imagekit.errors import FetchError, ImagekitError, StoreError
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, partial_size, publish_alone
from tests.require import require

TMPFS_SIZE = 6 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_disk_full_mid_download_is_clear_resumable_and_recoverable(
    small_disk: Path, upstream: Upstream, tmp_path: Path
) -> None:
    store = Store(small_disk / "store")
    big = make_qcow2(tmp_path / "big.qcow2", size=8 << 20, seed=41)
    small = make_qcow2(tmp_path / "small.qcow2", size=1 << 20, seed=42)
    big_recipe = publish_alone(upstream, "big.qcow2", big, "big")

    with pytest.raises(FetchError, match="disk full") as exc:
        store.pull(imagekit.load_recipe(big_recipe))
    assert "resume" in str(exc.value)
    # bytes on disk: a segmented download's file has its full length, with holes
    kept = sum(p.stat().st_blocks * 512 for p in store.tmp_dir.glob("*.part"))
    assert 0 < kept < len(big), "the partial download is kept for resuming"
    assert list(store.tmp_dir.glob("*.part.json")), "its resume sidecar is kept too"
    assert list(store.blobs_dir.iterdir()) == []
    assert store.refs() == []
    assert_consistent(store)

    # gc --partial gives the space back; the store is usable for an image that fits.
    report = store.gc(remove_partial=True)
    assert report.freed_bytes >= kept
    assert partial_size(store) == 0
    image = store.pull(imagekit.load_recipe(publish_alone(upstream, "small.qcow2", small, "small")))
    assert image.path.read_bytes() == small
    assert_consistent(store)
    figures.add("disk-full cases ending in a clear error and a usable store")


def test_disk_full_keeps_the_partial_that_resumes_once_space_is_freed(
    small_disk: Path, upstream: Upstream, tmp_path: Path
) -> None:
    store = Store(small_disk / "store")
    image_data = make_qcow2(tmp_path / "mid.qcow2", size=3 << 20, seed=43)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(TMPFS_SIZE - (2 << 20)))  # leaves ~2 MiB: the pull stops midway
    upstream.publish("mid.qcow2", image_data)
    recipe = imagekit.load_recipe(upstream.recipe("mid.qcow2", name="mid"))

    with pytest.raises(FetchError, match="disk full"):
        store.pull(recipe)
    kept = partial_size(store)
    assert 0 < kept < len(image_data)
    assert_consistent(store)

    filler.unlink()
    upstream.server.clear_log()
    image = store.pull(recipe)
    gets = [e.range for e in upstream.server.log("/pub/mid.qcow2") if e.method == "GET"]
    assert gets == [f"bytes={kept}-"]
    assert image.path.read_bytes() == image_data
    assert_consistent(store)
    figures.add("disk-full cases ending in a clear error and a usable store")


def fill(directory: Path) -> None:
    """Write zeros until the filesystem refuses: not one more block is free."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_store_writes_on_a_full_disk_are_typed_errors_and_change_nothing(
    small_disk: Path, image_bytes: bytes, tmp_path: Path
) -> None:
    store = Store(small_disk / "store")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(image_bytes)
    image = store.import_file(disk, "kept:1")
    index = (store.root / "index.json").read_bytes()
    fill(small_disk)

    with pytest.raises(StoreError, match="disk full"):
        store.add_bytes(os.urandom(10000), "application/octet-stream")
    with pytest.raises(StoreError, match="disk full"):
        store.tag("other:1", store.resolve("kept:1"))
    with pytest.raises(StoreError, match="disk full"):
        store.untag("kept:1")
    assert (store.root / "index.json").read_bytes() == index
    assert list(store.tmp_dir.glob("new-*")) == []  # no half-written temp is left behind
    assert store.image("kept:1").path.read_bytes() == image_bytes
    assert_consistent(store)
    assert image.ref == "kept:1"
    figures.add("disk-full cases ending in a clear error and a usable store")


def test_pull_on_a_full_disk_is_a_typed_error(
    small_disk: Path, upstream: Upstream, image_bytes: bytes
) -> None:
    store = Store(small_disk / "store")
    recipe = publish_alone(upstream, "full.qcow2", image_bytes, "full")
    fill(small_disk)

    with pytest.raises(ImagekitError, match=r"disk full|no space"):
        store.pull(imagekit.load_recipe(recipe))
    assert_consistent(store)
    figures.add("disk-full cases ending in a clear error and a usable store")
