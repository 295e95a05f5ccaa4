"""Hostile names: refs, tags, recipe names and digests never become paths outside the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imagekit
from imagekit.core.refs import parse_ref
from imagekit.errors import ImagekitError, RecipeError, StoreError
from imagekit.oci.media import MEDIA_DISK_RAW
from imagekit.store import Store
from tests.conftest import Upstream
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, files_outside

BAD_REFS = [
    "../escape:1",
    "name:..",
    "name:../../etc",
    "/etc/passwd",
    "a/b:1",
    "name:a/b",
    "na\0me:1",
    "name:1\0",
    "name\n:1",
    "name:1\nother:2",
    "-rf:1",
    ".hidden:1",
    "name:.hidden",
    "name:-flag",
    "a..b:1",
    "UPPER:1",
    "",
    ":1",
    "name:",
    "x" * 129 + ":1",
]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_refs_are_refused_everywhere_and_nothing_is_written(
    store: Store, tmp_path: Path, image_bytes: bytes, ref: str
) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(image_bytes)
    layer = store.add_bytes(b"disk", MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": "n"}, [layer])
    index = (store.root / "index.json").read_bytes()
    before = files_outside(tmp_path, store)

    for attempt in (
        lambda: parse_ref(ref),
        lambda: store.tag(ref, manifest),
        lambda: store.import_file(disk, ref),
        lambda: store.untag(ref),
    ):
        with pytest.raises(RecipeError, match="invalid"):
            attempt()
    assert (store.root / "index.json").read_bytes() == index
    assert files_outside(tmp_path, store) == before
    assert_consistent(store)
    figures.add("hostile names refused")


@pytest.mark.parametrize("name", ["../up", "a/b", "/abs", "x\0y", "x\ny", "..", "Name"])
def test_bad_recipe_names_are_refused(name: str) -> None:
    text = f'name = {json.dumps(name)}\nversion = "1"\n[source]\n'
    text += 'url = "https://example.invalid/x.qcow2"\ninsecure = true\n'
    with pytest.raises(RecipeError, match="name"):
        imagekit.load_recipe_string(text)
    figures.add("hostile names refused")


@pytest.mark.parametrize("tag", ["..", "../x", "a/b", "x\0", "x\n"])
def test_pull_with_a_bad_tag_writes_nothing(
    store: Store, upstream: Upstream, image_bytes: bytes, tag: str
) -> None:
    upstream.publish("img.qcow2", image_bytes)
    with pytest.raises(RecipeError, match="invalid"):
        store.pull(imagekit.load_recipe(upstream.recipe("img.qcow2")), tag=f"img:{tag}")
    assert list(store.blobs_dir.iterdir()) == []
    assert upstream.server.log() == []  # refused before any request
    figures.add("hostile names refused")


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "sha256:/etc", "sha512:" + "0" * 64]
)
def test_bad_digests_never_name_a_path(store: Store, digest: str) -> None:
    with pytest.raises(StoreError, match="malformed digest"):
        store.blob_path(digest)
    with pytest.raises(ImagekitError):
        store.resolve(digest)
    figures.add("hostile names refused")


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=80))
def test_any_ref_is_refused_or_a_plain_name(text: str) -> None:
    figures.add("hypothesis examples: refs")
    try:
        ref = parse_ref(text)
    except RecipeError:
        return
    for part in (ref.name, ref.tag):
        assert "/" not in part and "\0" not in part and "\n" not in part
        assert not part.startswith(("-", ".")) and ".." not in ref.name


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=300))
def test_any_lock_key_stays_in_the_locks_dir(
    tmp_path_factory: pytest.TempPathFactory, key: str
) -> None:
    figures.add("hypothesis examples: lock keys")
    store = _shared_store(tmp_path_factory)
    lock = store.digest_lock(key)
    assert lock.path.parent == store.locks_dir
    assert lock.path.name not in (".", "..") and lock.path.name.endswith(".lock")


_STORES: dict[str, Store] = {}


def _shared_store(factory: pytest.TempPathFactory) -> Store:
    if "s" not in _STORES:
        _STORES["s"] = Store(factory.mktemp("locks") / "store")
    return _STORES["s"]
