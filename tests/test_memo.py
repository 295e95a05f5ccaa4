"""Memos of what was read from blobs (oci/memo.py): used when sound, rebuilt when not.

gc must never remove a reachable blob whatever state its memo is in, and ``images`` must say
what the blobs say.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from imagekit.oci import gc, index
from imagekit.oci.descriptor import Descriptor
from imagekit.oci.media import MEDIA_DISK_RAW, MEDIA_MANIFEST, REF_ANNOTATION, signature_tag
from imagekit.oci.memo import LiveSet
from imagekit.store import Store


def image(store: Store, ref: str, seed: int) -> str:
    disk = store.add_bytes(bytes([seed]) * 1024, MEDIA_DISK_RAW)
    config = {"name": ref, "verification": {"level": "unverified"}}
    manifest = store.write_manifest(config, [disk])
    store.tag(ref, manifest)
    return manifest.digest


def reachable(store: Store) -> set[str]:
    found = set()
    for _, descriptor in store.refs():
        manifest = store.manifest(descriptor.digest)
        found |= {descriptor.digest, manifest["config"]["digest"]}
        found |= {layer["digest"] for layer in manifest["layers"]}
    return found


@pytest.mark.parametrize("damage", ["none", "garbage", "not-an-object", "wrong-shapes", "gone"])
def test_gc_keeps_every_reachable_blob_whatever_its_memo_holds(store: Store, damage: str) -> None:
    for n in range(4):
        image(store, f"m:{n}", n)
    loose = store.add_bytes(b"nobody needs this", MEDIA_DISK_RAW)
    assert store.gc().removed_blobs == [loose.digest]
    memo = store.cache_dir / "memo-gc-children.json"
    assert memo.is_file()
    values = json.loads(memo.read_text())
    damaged = {
        "none": memo.read_text(),
        "garbage": "{not json",
        "not-an-object": "[1, 2]",
        "wrong-shapes": json.dumps({h: {"no": "list"} for h in values}),
        "gone": None,
    }[damage]
    if damaged is None:
        memo.unlink()
    else:
        memo.write_text(damaged)
    store.remove("m:0")
    report = store.gc()
    assert len(report.removed_blobs) == 3  # m:0's manifest, config and disk; nothing else
    assert all(store.has_blob(d) for d in reachable(store))
    assert store.fsck().ok


def test_images_from_the_memo_say_what_the_blobs_say(store: Store, tmp_path: Path) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    first = store.summaries()
    assert first == [i.summary() for i in store.images()]
    memo = store.cache_dir / "memo-summaries.json"
    assert len(json.loads(memo.read_text())) == 3
    assert store.summaries() == first  # from the memo now
    memo.write_text(json.dumps({h: {"image": "x"} for h in json.loads(memo.read_text())}))
    assert store.summaries() == first  # a value of the wrong shape is read again
    store.remove("m:1")
    assert [row["ref"] for row in store.summaries()] == ["m:0", "m:2"]
    assert len(json.loads(memo.read_text())) == 2  # what no ref names is dropped


# --- gc's live set (cache/memo-gc-live): reused only while what it was marked from is unchanged


def live_memo(store: Store) -> Path:
    return store.cache_dir / "memo-gc-live"


def blobs_of(store: Store, manifest: str) -> set[str]:
    body = store.manifest(manifest)
    return {manifest, body["config"]["digest"]} | {layer["digest"] for layer in body["layers"]}


def gc_removes_exactly(store: Store, expected: set[str], **options: object) -> None:
    """gc removes ``expected`` and nothing any ref reaches; the store checks clean."""
    report = store.gc(**options)  # type: ignore[arg-type]
    assert set(report.removed_blobs) == expected
    assert all(store.has_blob(d) for d in reachable(store))
    assert store.fsck().ok


def truncated(data: bytes) -> bytes:
    return data[: len(data) - 80]


def one_digest_dropped(data: bytes) -> bytes:
    head, _, body = data.partition(b"\n")
    return head + b"\n" + b"\n".join(body.split(b"\n")[1:])  # its header's hash no longer holds


def one_digest_changed(data: bytes) -> bytes:
    rest, _, _ = data.rpartition(b"\n")  # the last line: a marked blob's
    return rest + b"\nsha256:" + b"0" * 64  # as many lines, one of them wrong


def wrong_types(data: bytes) -> bytes:
    head, _, body = data.partition(b"\n")
    header = json.loads(head)
    return json.dumps({**header, "count": "everything", "others": 7}).encode() + b"\n" + body


def roots_miscounted(data: bytes) -> bytes:
    """A root counted among the marked blobs: no longer a root, its header says."""
    head, _, body = data.partition(b"\n")
    header = json.loads(head)
    shifted = {**header, "roots": header["roots"] - 1, "count": header["count"] + 1}
    return json.dumps(shifted).encode() + b"\n" + body


def other_version(data: bytes) -> bytes:
    head, _, body = data.partition(b"\n")
    return json.dumps({**json.loads(head), "version": 2}).encode() + b"\n" + body


LIVE_DAMAGE = {
    "garbage": lambda data: b"{not json\nsha256:00",
    "empty": lambda data: b"",
    "truncated": truncated,
    "one-digest-dropped": one_digest_dropped,
    "one-digest-changed": one_digest_changed,
    "wrong-types": wrong_types,
    "roots-miscounted": roots_miscounted,
    "other-version": other_version,
}


@pytest.mark.parametrize("damage", [*LIVE_DAMAGE, "gone"])
def test_a_damaged_live_set_costs_a_full_mark_never_a_live_blob(store: Store, damage: str) -> None:
    for n in range(4):
        image(store, f"m:{n}", n)
    store.gc()
    memo = live_memo(store)
    if damage == "gone":
        memo.unlink()
    else:
        memo.write_bytes(LIVE_DAMAGE[damage](memo.read_bytes()))
    loose = store.add_bytes(b"nobody needs this", MEDIA_DISK_RAW)
    gc_removes_exactly(store, {loose.digest})
    lines = memo.read_bytes().partition(b"\n")[2].split(b"\n")
    assert len(lines) == 4 + 12  # written again, whole: 4 roots, then 12 marked blobs


def test_an_unchanged_store_reuses_the_live_set_without_reading_the_index(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    store.gc()
    loose = store.add_bytes(b"written, never tagged", MEDIA_DISK_RAW)

    def no_parse(*args: object) -> None:
        raise AssertionError("gc parsed the index of an unchanged store")

    monkeypatch.setattr(Store, "entries", no_parse)
    assert store.gc().removed_blobs == [loose.digest]
    assert store.gc().removed_blobs == []


def test_a_live_set_of_an_older_index_is_never_reused(store: Store) -> None:
    """The memo of an index that had m:0 and lacked m:4, put back after both changed: as if a
    crash lost the newer memo, or a backup restored an older one."""
    for n in range(4):
        image(store, f"m:{n}", n)
    store.gc()
    older = live_memo(store).read_bytes()
    gone = blobs_of(store, store.resolve("m:0").digest)
    store.remove("m:0")
    new = image(store, "m:4", 4)
    live_memo(store).write_bytes(older)
    gc_removes_exactly(store, gone)
    assert blobs_of(store, new) <= set(reachable(store))
    live_memo(store).write_bytes(older)  # again, now that m:0's blobs are gone too
    loose = store.add_bytes(b"loose", MEDIA_DISK_RAW)
    gc_removes_exactly(store, {loose.digest})


def test_an_index_that_only_gained_refs_marks_only_the_new_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    store.gc()
    new = image(store, "m:3", 3)
    store.tag("also:m1", store.resolve("m:1"))  # a second ref to a marked image
    disk = Descriptor.from_json(store.manifest(new)["layers"][0])
    child = store.write_manifest({"name": "child"}, [disk]).digest
    store.tag("child:1", store.resolve(child))  # an image sharing m:3's disk
    loose = store.add_bytes(b"loose", MEDIA_DISK_RAW)
    with monkeypatch.context() as patched:
        patched.setattr(Store, "entries", lambda *args: pytest.fail("parsed the whole index"))
        assert store.gc().removed_blobs == [loose.digest]
    assert all(store.has_blob(d) for d in reachable(store))
    recorded = set(live_memo(store).read_bytes().partition(b"\n")[2].decode().split("\n"))
    assert blobs_of(store, new) | blobs_of(store, child) <= recorded
    assert {new, child} <= recorded  # among the roots too
    gc_removes_exactly(store, set())


def test_a_moved_ref_changes_nothing_a_removed_one_marks_again_from_every_ref(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    store.gc()
    store.tag("m:0", store.resolve("m:0"))  # its line moves to the end: the same roots
    loose = store.add_bytes(b"loose", MEDIA_DISK_RAW)
    with monkeypatch.context() as patched:
        patched.setattr(Store, "entries", lambda *args: pytest.fail("parsed the whole index"))
        assert store.gc().removed_blobs == [loose.digest]
    old = blobs_of(store, store.resolve("m:1").digest)
    store.tag("m:1", store.resolve("m:2"))  # a retag moves the ref's line: not only a gain
    gc_removes_exactly(store, old)


def test_other_roots_are_part_of_the_live_sets_key(store: Store) -> None:
    image(store, "m:0", 0)
    loose = store.add_bytes(b"kept by an extra root only", MEDIA_DISK_RAW)
    gc_removes_exactly(store, set(), extra_roots=[loose.digest])
    gc_removes_exactly(store, {loose.digest})  # the same index, without that root
    again = store.add_bytes(b"kept by an extra root only", MEDIA_DISK_RAW)
    gc_removes_exactly(store, set(), extra_roots=[again.digest])


def test_a_live_set_marked_past_a_missing_blob_is_not_kept(store: Store) -> None:
    """A ref to a manifest whose blob is missing: once the blobs are back (no tag changes),
    its config and disk are live although the mark that missed it could not know them."""
    image(store, "m:0", 0)
    manifest = image(store, "m:1", 1)
    saved = {d: store.blob_path(d).read_bytes() for d in blobs_of(store, manifest)}
    store.blob_path(manifest).unlink()
    live_memo(store).unlink(missing_ok=True)
    assert set(store.gc().removed_blobs) == set(saved) - {manifest}  # they look unreachable
    assert not live_memo(store).exists()
    for data in saved.values():
        store.add_bytes(data, MEDIA_DISK_RAW)
    gc_removes_exactly(store, set())
    assert all(store.has_blob(d) for d in saved)


def test_new_signatures_are_kept_or_untagged_as_in_a_full_mark(store: Store) -> None:
    kept = image(store, "m:0", 0)
    gone = image(store, "m:1", 1)
    store.remove("m:1")
    store.gc()
    signature = store.write_manifest({"name": "signature"}, [])
    store.tag(f"m:{signature_tag(kept)}", signature)
    store.tag(f"m:{signature_tag(gone)}", signature)
    report = store.gc()
    assert report.removed_signatures == [f"m:{signature_tag(gone)}"]
    assert report.removed_blobs == []
    assert store.has_blob(signature.digest)
    assert store.gc().removed_blobs == []


def test_refs_and_digests_reads_what_gc_needs_or_nothing() -> None:
    entry = Descriptor(MEDIA_MANIFEST, "sha256:" + "a" * 64, 2, {REF_ANNOTATION: "a:1"})
    untagged = Descriptor(MEDIA_MANIFEST, "sha256:" + "b" * 64, 2, {})
    data = index.encode([entry.to_json(), untagged.to_json()])
    assert index.refs_and_digests(data) == [("a:1", entry.digest), (None, untagged.digest)]
    reformed = json.dumps(json.loads(data), indent=4).encode()  # another form, the same entries
    assert index.refs_and_digests(reformed) == index.refs_and_digests(data)
    bad = index.encode([{**entry.to_json(), "digest": "sha256:AB"}])
    assert index.refs_and_digests(bad) is None
    assert index.refs_and_digests(b"{not json") is None
    assert index.refs_and_digests(b'{"schemaVersion": 2, "manifests": {}}') is None
    swapped = index.encode([untagged.to_json(), entry.to_json()])
    assert index.lines_digest(swapped) == index.lines_digest(data) is not None
    assert index.lines_digest(index.encode([entry.to_json()])) != index.lines_digest(data)
    assert index.lines_digest(reformed) is None


def test_a_dry_run_or_a_retention_policy_uses_no_live_set_it_cannot_keep(store: Store) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    store.gc()
    recorded = live_memo(store).read_bytes()
    loose = store.add_bytes(b"loose", MEDIA_DISK_RAW)
    assert store.gc(dry_run=True).removed_blobs == [loose.digest]
    assert store.has_blob(loose.digest)
    report = store.gc(keep_last=1)  # the policy's choice is marked in full, as ever
    assert len(report.removed_refs) == 2
    assert len(report.removed_blobs) == 1 + 3 * 2
    assert all(store.has_blob(d) for d in reachable(store))
    assert live_memo(store).read_bytes() == recorded  # not rewritten by either run
    gc_removes_exactly(store, set())  # the record's index is gone: a full mark, nothing to do


def settled_gc(store: Store) -> None:
    """A gc whose look at blobs/ comes well after its last change, so the next may trust it."""
    store.gc()
    time.sleep(0.15)
    store.gc()


def test_nothing_added_and_the_same_roots_skip_the_mark_and_the_sweep(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    settled_gc(store)
    store.tag("m:0", store.resolve("m:0"))  # a moved ref: the same roots
    with monkeypatch.context() as patched:
        patched.setattr(LiveSet, "load", lambda *args: pytest.fail("loaded the live set"))
        patched.setattr(gc, "sweep_blobs", lambda *args: pytest.fail("listed blobs/"))
        patched.setattr(index, "refs_and_digests", lambda *args: pytest.fail("parsed the index"))
        assert store.gc().removed_blobs == []
    loose = store.add_bytes(b"loose", MEDIA_DISK_RAW)  # blobs/ changed: listed again
    gc_removes_exactly(store, {loose.digest})
    settled_gc(store)
    gone = blobs_of(store, store.resolve("m:1").digest)
    store.remove("m:1")  # blobs/ as the last sweep left it, but a root fewer
    gc_removes_exactly(store, gone)


@pytest.mark.parametrize("damage", ["none", "garbage", "other-blobs", "gone"])
def test_a_damaged_sweep_record_costs_a_sweep_never_a_live_blob(store: Store, damage: str) -> None:
    for n in range(3):
        image(store, f"m:{n}", n)
    settled_gc(store)
    record = store.cache_dir / "memo-gc-swept"
    obj = json.loads(record.read_text())
    if damage == "gone":
        record.unlink()
    elif damage == "none":
        pass  # blobs/ as it left it, the roots not: a ref fewer
    elif damage == "garbage":
        record.write_text('{"version": 1, "blobs": "all"')
    else:
        record.write_text(json.dumps({**obj, "blobs": [0, 0, 0]}))
    gone = blobs_of(store, store.resolve("m:2").digest)
    store.remove("m:2")
    gc_removes_exactly(store, gone)
