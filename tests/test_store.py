"""The store on a plain filesystem: blobs, refs, gc, fsck and locking between processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imagekit.core.locking import FileLock
from imagekit.core.refs import Ref, parse_ref, validate_digest, validate_name, validate_tag
from imagekit.errors import RecipeError, RefNotFoundError, StoreError
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import (
    ARTIFACT_TYPE,
    MEDIA_CONFIG,
    MEDIA_DISK_QCOW2,
    MEDIA_DISK_RAW,
    MEDIA_EVIDENCE_CHECKSUM,
    MEDIA_MANIFEST,
    PARENT_ANNOTATION,
    REF_ANNOTATION,
)
from imagekit.store import Store

MP = multiprocessing.get_context("fork")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image(store: Store, ref: str, disk: bytes = b"disk") -> Descriptor:
    """Store a one-disk image, tag it and return its manifest descriptor."""
    layer = store.add_bytes(disk, MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": ref}, [layer])
    store.tag(ref, manifest)
    return manifest


def qcow2_overlay(parent: str, payload: bytes = b"") -> bytes:
    """A minimal qcow2 header naming ``parent`` (a blob file name) as its backing file."""
    name = parent.removeprefix("sha256:").encode()
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (72).to_bytes(8, "big")
    header += len(name).to_bytes(4, "big")
    return header.ljust(72, b"\0") + name + payload


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_new_store_is_an_oci_layout(store: Store) -> None:
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    for d in (store.blobs_dir, store.tmp_dir, store.cache_dir, store.locks_dir):
        assert d.is_dir()
    assert Store(store.root).refs() == []  # reopening keeps it as is


def test_refuses_other_layout_version(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(StoreError, match=r"2\.0\.0"):
        Store(tmp_path)
    assert not (tmp_path / "blobs").exists()


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEKIT_HOME", str(tmp_path / "home"))
    assert Store.default().root == tmp_path / "home"
    monkeypatch.delenv("IMAGEKIT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert Store.default().root == tmp_path / "xdg" / "imagekit"


def test_add_bytes_and_json_round_trip(store: Store) -> None:
    d = store.add_bytes(b"hello", "text/plain", {"k": "v"})
    assert d == Descriptor("text/plain", sha(b"hello"), 5, {"k": "v"})
    assert store.read_blob(d.digest) == b"hello"
    assert store.blob_path(d.digest).stat().st_mode & 0o777 == 0o400

    j = store.add_json({"b": 1, "a": ["é", 2]}, MEDIA_CONFIG)
    raw = '{"a":["é",2],"b":1}'.encode()
    assert store.read_blob(j.digest) == raw and j.digest == sha(raw)
    assert store.read_json(j.digest) == {"a": ["é", 2], "b": 1}
    assert store.add_json({"a": ["é", 2], "b": 1}, MEDIA_CONFIG) == j
    assert list(store.tmp_dir.iterdir()) == []


def test_descriptor_json() -> None:
    d = Descriptor(MEDIA_DISK_RAW, sha(b"x"), 1)
    assert d.to_json() == {"mediaType": MEDIA_DISK_RAW, "digest": sha(b"x"), "size": 1}
    assert Descriptor.from_json(d.to_json()) == d
    for bad in ({**d.to_json(), "digest": "sha256:xyz"}, {**d.to_json(), "size": True}, [1]):
        with pytest.raises(StoreError, match="malformed descriptor"):
            Descriptor.from_json(bad)


def test_commit_file_moves_temp_read_only(store: Store) -> None:
    temp = store.new_temp(".qcow2")
    assert temp.parent == store.tmp_dir and temp.name.startswith(f"new-{os.getpid()}-")
    temp.write_bytes(b"x" * 3_000_000)
    d = store.commit_file(temp, sha(b"x" * 3_000_000), MEDIA_DISK_RAW, verify=True)
    assert not temp.exists() and d.size == 3_000_000
    assert store.blob_path(d.digest).stat().st_mode & 0o777 == 0o400
    report = store.fsck()
    assert report.ok and report.blobs_checked == 1 and report.bytes_checked == 3_000_000

    again = store.new_temp()
    again.write_bytes(b"x" * 3_000_000)
    assert store.commit_file(again, d.digest, MEDIA_DISK_RAW) == d  # idempotent
    assert not again.exists() and len(list(store.blobs_dir.iterdir())) == 1


def test_commit_file_verify_mismatch(store: Store) -> None:
    temp = store.new_temp()
    temp.write_bytes(b"evil")
    with pytest.raises(StoreError, match="hashes to"):
        store.commit_file(temp, sha(b"good"), MEDIA_DISK_RAW, verify=True)
    assert list(store.blobs_dir.iterdir()) == [] and not temp.exists()


def test_commit_file_only_from_tmp(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "mine.img"
    outside.write_bytes(b"x")
    with pytest.raises(StoreError, match="only files under"):
        store.commit_file(outside, sha(b"x"), MEDIA_DISK_RAW)
    assert outside.exists()


def test_write_manifest(store: Store) -> None:
    layer = store.add_bytes(b"disk", MEDIA_DISK_RAW)
    m = store.write_manifest({"name": "x"}, [layer], {"a": "b"})
    assert m.media_type == MEDIA_MANIFEST and m.annotations == {}
    obj = store.manifest(m.digest)
    assert obj["artifactType"] == ARTIFACT_TYPE and obj["annotations"] == {"a": "b"}
    assert obj["layers"] == [layer.to_json()]
    assert store.read_json(obj["config"]["digest"]) == {"name": "x"}
    missing = Descriptor(MEDIA_DISK_RAW, sha(b"nope"), 4)
    with pytest.raises(StoreError, match="not in the store"):
        store.write_manifest({}, [missing])


def test_tag_resolve_untag_refs(store: Store) -> None:
    a = image(store, "fedora:41", b"a")
    b = image(store, "fedora:40", b"b")
    c = image(store, "debian", b"c")
    assert [r for r, _ in store.refs()] == ["debian:latest", "fedora:40", "fedora:41"]
    assert store.resolve("fedora:41").digest == a.digest
    assert store.resolve("fedora:41").annotations[REF_ANNOTATION] == "fedora:41"
    assert store.resolve("debian").digest == c.digest
    store.tag("fedora:41", b)  # retag replaces, keeping other annotations as given
    store.tag("fedora:41", Descriptor(b.media_type, b.digest, b.size, {"x.y": "z"}))
    [(_, entry)] = [(r, d) for r, d in store.refs() if r == "fedora:41"]
    assert entry.digest == b.digest and entry.annotations["x.y"] == "z"
    assert store.untag("fedora:41").digest == b.digest
    assert store.resolve("fedora").digest == b.digest  # the only tag of that name left
    with pytest.raises(RefNotFoundError, match="fedora:40"):
        store.untag("fedora:41")


def test_resolve_by_name_digest_prefix(store: Store) -> None:
    one = image(store, "alma:9", b"1")
    two = image(store, "alma:latest", b"2")
    image(store, "rocky:8", b"3")
    image(store, "rocky:9", b"4")
    assert store.resolve("alma").digest == two.digest  # several tags: the :latest one
    with pytest.raises(RefNotFoundError, match="rocky:8, rocky:9"):
        store.resolve("rocky")
    assert store.resolve(one.digest).digest == one.digest
    assert store.resolve(one.digest[:19]).digest == one.digest
    assert store.resolve(one.digest[7:19]).digest == one.digest
    with pytest.raises(RecipeError, match="12 to 64"):
        store.resolve("sha256:abc")
    with pytest.raises(RefNotFoundError, match="alma:9"):
        store.resolve("alma:8")
    with pytest.raises(RefNotFoundError, match="alma:9, alma:latest, rocky:8, rocky:9"):
        store.resolve("ubuntu")
    with pytest.raises(RefNotFoundError, match="sha256:"):
        store.resolve("sha256:" + "0" * 64)


def test_resolve_untagged_manifest_by_digest(store: Store) -> None:
    layer = store.add_bytes(b"d", MEDIA_DISK_RAW)
    m = store.write_manifest({}, [layer])
    assert store.resolve(m.digest) == m


def test_resolve_empty_store(store: Store) -> None:
    with pytest.raises(RefNotFoundError, match="empty"):
        store.resolve("fedora")


@pytest.mark.parametrize("bad", ["../x", "a/b", "x:y\n", "x\0", "-x", "X", "a..b", ":t", "x:"])
def test_invalid_refs(store: Store, bad: str) -> None:
    d = image(store, "ok", b"ok")
    for call in (store.resolve, store.untag, lambda r: store.tag(r, d)):
        with pytest.raises(RecipeError, match="invalid") as err:
            call(bad)
        name, _, tag = bad.partition(":")
        assert repr(name) in str(err.value) or repr(tag) in str(err.value)


def test_refs_module() -> None:
    assert parse_ref("fedora") == Ref("fedora", "latest")
    assert str(parse_ref("fedora-server:41.1_x", default_tag="x")) == "fedora-server:41.1_x"
    assert validate_name("a" * 128) and validate_tag("T" * 128)
    assert validate_digest(sha(b""))
    for bad in ("a" * 129, "", "a\n", ".a"):
        with pytest.raises(RecipeError):
            validate_name(bad)
    for bad in ("T" * 129, "-t", ".t", "t\n"):
        with pytest.raises(RecipeError):
            validate_tag(bad)
    with pytest.raises(RecipeError, match="64 lowercase hex"):
        validate_digest("sha256:" + "A" * 64)


def test_gc_keeps_reachable(store: Store) -> None:
    base = store.add_bytes(b"base", MEDIA_DISK_RAW)
    mid_bytes = qcow2_overlay(base.digest, b"mid")
    mid = store.add_bytes(mid_bytes, MEDIA_DISK_QCOW2, {PARENT_ANNOTATION: base.digest})
    # The manifest lists only the top layer: parents are found by annotation and qcow2 header.
    top = store.add_bytes(qcow2_overlay(mid.digest), MEDIA_DISK_QCOW2)
    annotated = Descriptor(top.media_type, top.digest, top.size, {PARENT_ANNOTATION: mid.digest})
    evidence = store.add_bytes(b"SHA256 (x) = ...", MEDIA_EVIDENCE_CHECKSUM)
    tagged = store.write_manifest({"n": 1}, [annotated, evidence])
    store.tag("kept:1", tagged)
    cache_root = store.write_manifest({"n": 2}, [store.add_bytes(b"cached", MEDIA_DISK_RAW)])
    kept_blob = store.add_bytes(b"root blob", "text/plain")
    garbage = [store.add_bytes(b"junk", "text/plain"), image(store, "gone:1", b"old")]
    store.untag("gone:1")

    dry = store.gc(extra_roots=[cache_root.digest, kept_blob.digest], dry_run=True)
    assert dry.removed_blobs and all(store.has_blob(d) for d in dry.removed_blobs)
    report = store.gc(extra_roots=[cache_root.digest, kept_blob.digest])
    assert report.removed_blobs == dry.removed_blobs
    assert {g.digest for g in garbage} <= set(report.removed_blobs)
    assert sha(b"old") in report.removed_blobs and report.freed_bytes > 0
    for d in (base, mid, top, evidence, tagged, cache_root, kept_blob):
        assert store.has_blob(d.digest)
    assert store.fsck().ok
    assert store.gc(extra_roots=[cache_root.digest, kept_blob.digest]).removed_blobs == []
    assert len(store.gc().removed_blobs) == 4  # cache root manifest, config, layer; kept blob


def test_gc_temp_files(store: Store) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = store.tmp_dir / f"new-{dead.pid}-abc"
    stale.write_bytes(b"12345")
    stale_dir = store.tmp_dir / f"new-{dead.pid}-dir"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "f").write_bytes(b"1")
    live = store.new_temp()
    live.write_bytes(b"x")
    parts = [store.tmp_dir / "abc.part", store.tmp_dir / "abc.part.json"]
    for p in parts:
        p.write_bytes(b"p")
    other = store.tmp_dir / "abc.lock"
    other.write_bytes(b"")

    with FileLock(other):  # a download holding its lock: its lock file stays
        report = store.gc()
        assert sorted(report.removed_temp) == sorted([stale.name, stale_dir.name])
        assert report.freed_bytes == 6
        assert not stale.exists() and not stale_dir.exists()
        assert live.exists() and other.exists() and all(p.exists() for p in parts)
        report = store.gc(remove_partial=True)
        assert sorted(report.removed_temp) == ["abc.part", "abc.part.json"]
        assert live.exists() and other.exists()
    assert store.gc().removed_locks == ["tmp/abc.lock"] and not other.exists()


def test_fsck_flipped_bit(store: Store) -> None:
    image(store, "x:1", b"some disk bytes")
    path = store.blob_path(sha(b"some disk bytes"))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    path.chmod(0o444)
    report = store.fsck()
    assert not report.ok
    assert [p for p in report.problems if "corrupt" in p and path.name in p]
    with pytest.raises(StoreError, match="corrupt"):
        store.read_blob(sha(b"some disk bytes"))


def test_fsck_writable_and_stray(store: Store) -> None:
    d = store.add_bytes(b"b", "text/plain")
    store.blob_path(d.digest).chmod(0o644)
    (store.blobs_dir / "notahash").write_bytes(b"")
    problems = store.fsck().problems
    assert any("writable" in p for p in problems)
    assert any("notahash" in p for p in problems)


def test_fsck_missing_layer(store: Store) -> None:
    image(store, "x:1", b"layer")
    store.blob_path(sha(b"layer")).unlink()
    report = store.fsck()
    assert any("x:1" in p and sha(b"layer") in p and "missing" in p for p in report.problems)


def test_malformed_index(store: Store) -> None:
    d = image(store, "x:1")
    (store.root / "index.json").write_text('{"schemaVersion": 2, "manifests": [{"digest": 1}]}')
    assert any("index.json" in p for p in store.fsck().problems)
    for call in (store.refs, lambda: store.resolve("x:1"), store.gc):
        with pytest.raises(StoreError, match="imagekit fsck"):
            call()
    (store.root / "index.json").write_text("{not json")
    with pytest.raises(StoreError, match="imagekit fsck"):
        store.tag("x:2", d)


def test_digest_lock_key(store: Store) -> None:
    assert store.digest_lock("sha256:ab").path == store.locks_dir / "sha256-ab.lock"
    assert store.digest_lock("../../etc").path.parent == store.locks_dir
    with store.digest_lock("k"), pytest.raises(StoreError, match="timed out"):
        store.digest_lock("k", timeout=0.1).acquire()


def _tag_in_child(root: Path, i: int) -> None:
    store = Store(root)
    with store.shared_lock():
        image(store, f"img{i}:v", f"disk {i}".encode())


def test_concurrent_tag_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    procs = [MP.Process(target=_tag_in_child, args=(root, i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    store = Store(root)
    assert [r for r, _ in store.refs()] == [f"img{i}:v" for i in range(8)]
    assert store.fsck().ok


def _hold_shared(root: Path, held: Any, go: Any) -> None:
    with Store(root).shared_lock():
        held.set()
        go.wait(10)


def test_gc_waits_for_shared_lock(store: Store) -> None:
    held, go = MP.Event(), MP.Event()
    holder = MP.Process(target=_hold_shared, args=(store.root, held, go))
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(StoreError, match="timed out"):
            store.exclusive_lock(timeout=0.1).acquire()
        finished: list[float] = []

        def run_gc() -> None:
            store.gc()
            finished.append(time.monotonic())

        gc = threading.Thread(target=run_gc)
        gc.start()
        time.sleep(0.3)
        assert not finished  # gc is blocked behind the pull's shared lock
        released = time.monotonic()
        go.set()
        gc.join(10)
        assert finished and finished[0] >= released
    finally:
        go.set()
        holder.join(10)
