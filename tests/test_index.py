"""index.json's line form: a tag edits one line, other forms are read and kept, skopeo reads it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import subprocess

from imagekit.errors import StoreError
from imagekit.oci.media import MEDIA_DISK_RAW, REF_ANNOTATION
from imagekit.store import Store
from tests.require import require


def tagged(store: Store, ref: str, data: bytes) -> str:
    disk = store.add_bytes(data, MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": ref}, [disk])
    store.tag(ref, manifest)
    return manifest.digest


def test_a_tag_is_one_line_of_a_valid_oci_index(store: Store) -> None:
    index = store.root / "index.json"
    first = tagged(store, "a:1", b"\0" * 512)
    tagged(store, "b:1", b"\1" * 512)
    before = [line.rstrip(",") for line in index.read_text().splitlines()]
    tagged(store, "a:1", b"\2" * 512)  # a retag: the old line goes, the new one is last
    after = [line.rstrip(",") for line in index.read_text().splitlines()]
    assert len(after) == len(before)
    assert sum(line not in before for line in after) == 1  # (and a comma moves)
    obj = json.loads(index.read_text())
    assert obj["schemaVersion"] == 2 and obj["mediaType"].endswith("index.v1+json")
    assert [m["annotations"][REF_ANNOTATION] for m in obj["manifests"]] == ["b:1", "a:1"]
    assert store.resolve("a:1").digest != first
    assert store.untag("b:1").annotations[REF_ANNOTATION] == "b:1"
    assert [ref for ref, _ in store.refs()] == ["a:1"]


def test_an_index_in_another_form_is_read_and_rewritten_keeping_everything(
    store: Store,
) -> None:
    digest = tagged(store, "a:1", b"\0" * 512)
    index = store.root / "index.json"
    obj = json.loads(index.read_text())
    obj["manifests"][0]["platform"] = {"architecture": "amd64", "os": "linux"}
    index.write_text(json.dumps(obj, indent=4))  # as a person or another tool writes it
    assert store.resolve("a:1").digest == digest
    tagged(store, "b:1", b"\1" * 512)
    rewritten = json.loads(index.read_text())
    assert rewritten["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert len(index.read_text().splitlines()) == 2 + 2 + 4  # the line form: head, entries, tail

    obj = {**rewritten, "annotations": {"org.example.owner": "ops"}}
    index.write_text(json.dumps(obj))
    store.untag("b:1")
    assert json.loads(index.read_text())["annotations"] == {"org.example.owner": "ops"}
    assert [ref for ref, _ in store.refs()] == ["a:1"]


def test_a_damaged_index_is_a_one_line_error_and_stays_as_it_was(store: Store) -> None:
    tagged(store, "a:1", b"\0" * 512)
    index = store.root / "index.json"
    damaged = index.read_bytes().replace(b'"digest"', b'"digest', 1)
    index.write_bytes(damaged)
    for attempt in (lambda: store.refs(), lambda: store.untag("a:1")):
        try:
            attempt()
        except StoreError as e:
            assert "run `imagekit fsck`" in str(e) and "\n" not in str(e)
        else:
            raise AssertionError("a damaged index was read")
    assert index.read_bytes() == damaged


def test_skopeo_reads_the_line_form(store: Store) -> None:
    require(shutil.which("skopeo") is not None, "skopeo is not installed")
    digest = tagged(store, "a:1", b"\0" * 512)
    tagged(store, "b:1", b"\1" * 512)
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{store.root}:a:1"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert "sha256:" + hashlib.sha256(done.stdout).hexdigest() == digest


def test_one_ref_is_found_and_names_listed_without_parsing_every_entry(store: Store) -> None:
    digests = {ref: tagged(store, ref, bytes([n]) * 512) for n, ref in enumerate(["b:1", "a:1"])}
    sig = "a:sha256-" + "0" * 64 + ".sig"
    store.tag(sig, store.resolve("b:1"))
    for form in ("line", "indented"):
        assert store.ref_names() == ["a:1", sig, "b:1"], form
        found = store.find_ref("a:1")
        assert found is not None and found.digest == digests["a:1"], form
        assert store.find_ref("a:2") is None and store.find_ref("a") is None
        assert store.resolve("b").digest == digests["b:1"]  # a bare name: its only tag
        index = store.root / "index.json"
        index.write_text(json.dumps(json.loads(index.read_text()), indent=2))


def test_a_damaged_line_form_raises_only_store_errors_on_every_path(store: Store) -> None:
    for n, ref in enumerate(["a:1", "b:1", "c:1"]):
        tagged(store, ref, bytes([n]) * 512)
    index = store.root / "index.json"
    good = index.read_bytes()
    target = store.resolve("a:1")
    rng = random.Random(14)
    paths = [
        store.refs,
        store.ref_names,
        lambda: store.find_ref("b:1"),
        lambda: store.resolve("c"),
        lambda: store.untag("b:1"),
        lambda: store.tag("d:1", target),
    ]
    for _ in range(150):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.choice(b'{}[]",:\n\\x0\xff')
        for path in paths:
            index.write_bytes(bytes(damaged))
            with contextlib.suppress(StoreError):  # anything else fails the test
                path()
