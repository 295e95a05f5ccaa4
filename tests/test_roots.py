"""Roots: an ``export --link`` overlay keeps its backing chain through ``rm`` and ``gc``.

Real qemu-img throughout: a two-layer image (a base and a qcow2 layer backing onto it by blob
name, as builds make them), linked from outside the store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imagekit.errors import RecipeError, StoreError
from imagekit.image import Image
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import MEDIA_DISK_QCOW2, PARENT_ANNOTATION
from imagekit.store import Store
from tests.clirun import imagekit, imagekit_json

REF = "layered:1"


@pytest.fixture
def layered(store: Store, tmp_path: Path, image_bytes: bytes) -> Image:
    """A base disk and one qcow2 layer on it (64 KiB of 0x5a written), tagged ``layered:1``."""
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(image_bytes)
    base = store.import_file(disk, "base:1").disk
    work = tmp_path / "layer"
    work.mkdir()
    name = base.digest.removeprefix("sha256:")
    (work / name).symlink_to(store.blob_path(base.digest))
    top = work / "top.qcow2"
    qemu = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", name, str(top)]
    subprocess.run(qemu, check=True)
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(top)]
    subprocess.run(write, check=True, capture_output=True)
    temp = store.new_temp()
    shutil.copyfile(top, temp)
    digest = "sha256:" + hashlib.sha256(temp.read_bytes()).hexdigest()
    layer = store.commit_file(temp, digest, MEDIA_DISK_QCOW2, annotations={})
    layer = Descriptor(layer.media_type, layer.digest, layer.size, {PARENT_ANNOTATION: base.digest})
    store.tag(REF, store.write_manifest({"name": "layered"}, [base, layer]))
    store.remove("base:1")
    return store.image(REF)


def qemu_info(path: Path) -> subprocess.CompletedProcess[str]:
    command = ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_a_link_keeps_its_backing_chain_through_rm_and_gc(
    store: Store, layered: Image, tmp_path: Path
) -> None:
    vm = tmp_path / "vm.qcow2"
    chain = [d.digest for d in layered.disks]
    exported = imagekit("export", REF, "-o", str(vm), "--link", store=store)
    assert exported.returncode == 0, exported.stderr

    removed = imagekit("rm", REF, store=store)
    assert removed.returncode == 0, removed.stderr
    assert str(vm) in removed.stdout and "stay" in removed.stdout
    kept = imagekit_json("gc", store=store)
    assert not set(chain) & set(kept["removed_blobs"]) and kept["dropped_roots"] == {}
    assert all(store.has_blob(d) for d in (*chain, layered.digest))
    info = qemu_info(vm)
    assert info.returncode == 0, info.stderr
    opened = [entry["filename"] for entry in json.loads(info.stdout)]
    assert opened == [str(vm), *(str(store.blob_path(d)) for d in reversed(chain))]
    compare = ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(vm)]
    assert subprocess.run([*compare, str(layered.path)], capture_output=True).returncode == 0

    vm.unlink()
    swept = imagekit_json("gc", store=store)
    assert swept["dropped_roots"] == {str(vm): "the file is gone"}
    assert set(chain) | {layered.digest} <= set(swept["removed_blobs"])
    assert imagekit_json("roots", store=store) == []
    assert store.fsck().ok


def test_roots_are_listed_by_roots_images_and_inspect(
    store: Store, layered: Image, tmp_path: Path
) -> None:
    vm = tmp_path / "vm.qcow2"
    layered.export(vm, link=True)

    [root] = imagekit_json("roots", store=store)
    assert root["path"] == str(vm) and root["kind"] == "link" and root["ref"] == REF
    assert root["manifest"] == layered.digest and root["stale"] is None
    assert root["blobs"] == [d.digest for d in layered.disks]
    assert root["command"] == "export --link" and root["created"].endswith("Z")
    assert str(vm) in imagekit("roots", store=store).stdout
    [row] = imagekit_json("images", store=store)
    assert row["roots"] == [{"path": str(vm), "kind": "link"}]
    assert "1 file(s)" in imagekit("images", store=store).stdout
    assert imagekit_json("inspect", REF, store=store)["roots"] == [
        {"path": str(vm), "kind": "link"}
    ]
    assert f"used by:      {vm} (link)" in imagekit("inspect", REF, store=store).stdout
    assert [r.path for r in store.roots()] == [vm]


def test_gc_drops_roots_that_no_longer_back_onto_the_store(
    store: Store, layered: Image, tmp_path: Path
) -> None:
    flattened, moved = tmp_path / "flattened.qcow2", tmp_path / "rebased.qcow2"
    for path in (flattened, moved):
        layered.export(path, link=True)
    standalone = tmp_path / "standalone.qcow2"
    layered.export(standalone)
    shutil.copyfile(standalone, flattened)  # flattened in place: no backing file any more
    rebase = ["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(standalone), str(moved)]
    subprocess.run(rebase, check=True)
    assert all(store.root_stale_reason(r) for r in store.roots())

    dry = store.gc(dry_run=True)
    assert sorted(dry.dropped_roots) == [str(flattened), str(moved)]
    assert len(store.roots()) == 2
    report = store.gc()
    assert "no backing file" in report.dropped_roots[str(flattened)]
    assert str(standalone) in report.dropped_roots[str(moved)]
    assert store.roots() == []
    assert store.has_blob(layered.disk_digest)  # still tagged


def test_add_and_remove_root_through_the_api(store: Store, layered: Image, tmp_path: Path) -> None:
    vm = tmp_path / "by-hand.qcow2"
    backing = ["-F", "qcow2", "-b", str(layered.path)]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(vm)], check=True)
    root = store.add_root(vm, layered, kind="link")
    assert store.roots() == [root] and root.manifest == layered.digest

    store.remove(REF)
    needed = {layered.digest, *(d.digest for d in layered.disks)}
    assert not needed & set(store.gc().removed_blobs)
    assert qemu_info(vm).returncode == 0
    assert store.remove_root(vm) is True and store.remove_root(vm) is False
    assert layered.disk_digest in store.gc().removed_blobs


def test_a_failed_or_repeated_link_export_records_one_root_or_none(
    store: Store, layered: Image, tmp_path: Path
) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        layered.export(tmp_path / "missing" / "vm.qcow2", link=True)
    assert store.roots() == []
    vm = tmp_path / "vm.qcow2"
    layered.export(vm, link=True)
    with pytest.raises(RecipeError, match="--force"):
        layered.export(vm, link=True)
    layered.export(vm, link=True, force=True)
    assert [r.path for r in store.roots()] == [vm]


def test_a_damaged_root_record_stops_gc_before_it_removes_anything(
    store: Store, layered: Image, tmp_path: Path
) -> None:
    layered.export(tmp_path / "vm.qcow2", link=True)
    store.remove(REF)
    [record] = (store.root / "roots").iterdir()
    record.write_text('{"schemaVersion": 1, "path": "relative"}')

    with pytest.raises(StoreError, match="gc stopped, nothing removed"):
        store.gc()
    assert store.has_blob(layered.disk_digest)
    done = imagekit("gc", store=store)
    assert done.returncode == 6 and done.stderr.startswith("imagekit: error: ")
    assert len(done.stderr.strip().splitlines()) == 1
