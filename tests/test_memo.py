"""Memos of what was read from blobs (oci/memo.py): used when sound, rebuilt when not.

gc must never remove a reachable blob whatever state its memo is in, and ``images`` must say
what the blobs say.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit.oci.media import MEDIA_DISK_RAW
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
