"""The ``--json`` output of every command that has it, field by field: scripts rely on these shapes.

Each test runs the real CLI (``python -m imagekit``) against a loopback upstream; build and
customize of a scratch image launch the appliance (marked guestfs).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.clirun import imagekit_json
from tests.conftest import REPO, Upstream
from tests.gpgtools import TestKey
from tests.guestimage import build_guest_tree
from tests.test_build import write_recipe

FILENAME = "Shapes-Cloud-1.qcow2"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
SUMMARY = {"ref", "digest", "image", "path", "format", "size", "verification", "cached"}
BUILD = SUMMARY | {"layers", "generated_passwords"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_summary(row: dict[str, Any], *, ref: str, data: bytes | None, level: str) -> None:
    """The image summary every image-printing command shares."""
    assert set(row) == SUMMARY, sorted(row)
    assert row["ref"] == ref
    assert DIGEST.fullmatch(row["digest"]) and DIGEST.fullmatch(row["image"])
    path = Path(row["path"])
    assert path.is_file() and path.name == row["image"].removeprefix("sha256:")
    assert path.parent.name == "sha256" and path.parent.parent.name == "blobs"
    assert row["format"] == "qcow2"
    assert row["size"] == path.stat().st_size
    assert row["verification"] == level
    assert isinstance(row["cached"], bool)
    if data is not None:
        assert row["image"] == sha256(data) and row["size"] == len(data)


@pytest.fixture
def pulled(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A store with one pulled image, and what ``pull --json`` said."""
    store = str(tmp_path / "store")
    upstream.publish(FILENAME, image_bytes)
    return store, imagekit_json("pull", str(upstream.recipe(FILENAME)), "--store", store)


def test_pull(pulled: tuple[str, dict[str, Any]], upstream: Upstream, image_bytes: bytes) -> None:
    store, first = pulled
    assert_summary(first, ref="test-cloud:1", data=image_bytes, level="signed")
    assert first["cached"] is False
    again = imagekit_json("pull", str(upstream.recipe(FILENAME)), "--store", store)
    assert again == {**first, "cached": True}


def test_import(image_bytes: bytes, tmp_path: Path) -> None:
    disk = tmp_path / "mine.qcow2"
    disk.write_bytes(image_bytes)
    row = imagekit_json("import", str(disk), "--name", "mine:1", "--store", str(tmp_path / "store"))
    assert_summary(row, ref="mine:1", data=image_bytes, level="unverified")
    assert row["cached"] is False


def test_images(pulled: tuple[str, dict[str, Any]], image_bytes: bytes) -> None:
    store, first = pulled
    rows = imagekit_json("images", "--store", store)
    assert isinstance(rows, list) and len(rows) == 1
    row = dict(rows[0])
    assert row.pop("roots") == []  # no file outside the store backs onto it
    assert_summary(row, ref="test-cloud:1", data=image_bytes, level="signed")
    assert {k: v for k, v in row.items() if k != "cached"} == {
        k: v for k, v in first.items() if k != "cached"
    }


def test_inspect(pulled: tuple[str, dict[str, Any]], image_bytes: bytes) -> None:
    store, first = pulled
    record = imagekit_json("inspect", "test-cloud:1", "--store", store)
    assert set(record) == SUMMARY | {"manifest", "provenance", "roots", "signatures"}, sorted(
        record
    )
    assert record["roots"] == []
    assert record["signatures"] == []  # nobody signed it
    assert_summary(
        {k: record[k] for k in SUMMARY}, ref="test-cloud:1", data=image_bytes, level="signed"
    )
    manifest = record["manifest"]
    blobs = Path(record["path"]).parent
    assert (
        sha256((blobs / record["digest"].removeprefix("sha256:")).read_bytes()) == first["digest"]
    )
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert set(manifest["config"]) >= {"mediaType", "digest", "size"}
    disks = [layer for layer in manifest["layers"] if layer["digest"] == record["image"]]
    assert len(disks) == 1 and disks[0]["size"] == len(image_bytes)
    # provenance is the config blob, as stored.
    config = (blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes()
    assert record["provenance"] == json.loads(config)
    assert record["provenance"]["verification"]["level"] == "signed"


def test_gc(pulled: tuple[str, dict[str, Any]]) -> None:
    store, first = pulled
    kept = imagekit_json("gc", "--store", store)
    locks = kept.pop("removed_locks")  # the pull's lock files, nobody holds them any more
    assert locks and all(name.startswith(("locks/", "tmp/")) for name in locks)
    assert kept == {
        "removed_refs": [],  # tags a --keep-last policy removed, and why it kept the others
        "kept_refs": {},
        "removed_signatures": [],
        "removed_blobs": [],
        "removed_temp": [],
        "dropped_roots": {},
        "freed_bytes": 0,
        "dry_run": False,
    }
    subprocess.run(
        [sys.executable, "-m", "imagekit", "rm", "test-cloud:1", "--store", store],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    would = imagekit_json("gc", "--store", store, "--dry-run")
    assert set(would) == {
        "removed_refs",
        "kept_refs",
        "removed_signatures",
        "removed_blobs",
        "removed_temp",
        "removed_locks",
        "dropped_roots",
        "freed_bytes",
        "dry_run",
    }
    assert would["dry_run"] is True and Path(first["path"]).exists()
    assert first["image"] in would["removed_blobs"] and first["digest"] in would["removed_blobs"]
    assert all(DIGEST.fullmatch(d) for d in would["removed_blobs"])
    assert would["removed_temp"] == [] and would["freed_bytes"] > first["size"]
    done = imagekit_json("gc", "--store", store)
    assert done == {**would, "dry_run": False}
    assert not Path(first["path"]).exists()


def test_fsck(pulled: tuple[str, dict[str, Any]]) -> None:
    store, first = pulled
    blobs = list(Path(first["path"]).parent.iterdir())
    report = imagekit_json("fsck", "--store", store)
    assert report == {
        "ok": True,
        "problems": [],
        "blobs_checked": len(blobs),
        "bytes_checked": sum(p.stat().st_size for p in blobs),
    }


def test_verify(
    upstream: Upstream, image_bytes: bytes, signing_key: TestKey, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    checksum = tmp_path / "CHECKSUM"  # as downloaded by hand
    checksum.write_bytes(requests.get(upstream.server.url("/pub/CHECKSUM"), timeout=10).content)
    disk = tmp_path / FILENAME
    disk.write_bytes(image_bytes)
    key = ["--checksum", str(checksum), "--key", str(signing_key.public_key)]
    listed = imagekit_json("verify", *key)
    entry = {
        "filename": FILENAME,
        "algorithm": "sha256",
        "digest": hashlib.sha256(image_bytes).hexdigest(),
        "size": len(image_bytes),
    }
    assert listed == {"signer": signing_key.fingerprint, "entries": [entry]}
    matched = imagekit_json("verify", str(disk), *key)
    match = {k: entry[k] for k in ("filename", "algorithm", "digest")}
    assert matched == {**listed, "match": match}


RECIPE = {"name", "description", "version", "kind", "path", "level", "resolver"}
RECIPE |= {"versions", "arches", "shadows"}


def test_recipes() -> None:
    rows = imagekit_json("recipes")
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == RECIPE, row  # a bundled recipe that fails to load has "error"
        assert isinstance(row["name"], str) and isinstance(row["description"], str)
        assert row["version"] in row["versions"] or row["resolver"] is not None
        assert row["kind"] in ("http", "recipe", "scratch", "kickstart")
        assert Path(row["path"]).is_file()
        assert isinstance(row["level"], str)
        assert row["resolver"] is None or isinstance(row["resolver"], str)
        assert row["versions"] and all(isinstance(v, str) for v in row["versions"])
        assert row["arches"] and all(isinstance(a, str) for a in row["arches"])
        assert row["shadows"] is None or Path(row["shadows"]).is_file()
    assert "fedora-cloud" in {row["name"] for row in rows}


def assert_build(record: dict[str, Any], *, ref: str, names: list[str], cached: list[bool]) -> None:
    assert set(record) == BUILD, sorted(record)
    assert_summary({k: record[k] for k in SUMMARY}, ref=ref, data=None, level="unverified")
    layers = record["layers"]
    assert [set(layer) for layer in layers] == [{"name", "digest", "cached", "seconds"}] * len(
        layers
    )
    assert [layer["name"] for layer in layers] == names
    assert [layer["cached"] for layer in layers] == cached
    assert all(DIGEST.fullmatch(layer["digest"]) for layer in layers)
    assert all(isinstance(layer["seconds"], float) and layer["seconds"] >= 0 for layer in layers)
    assert layers[-1]["digest"] == record["image"]
    assert record["generated_passwords"] == {}


@pytest.mark.guestfs
def test_build_and_customize(tmp_path: Path) -> None:
    build_guest_tree(tmp_path / "tree")
    recipe = write_recipe(tmp_path, "", name="shape")
    store = str(tmp_path / "store")
    built = imagekit_json("build", str(recipe), "--store", store, timeout=600)
    assert_build(built, ref="shape:1", names=["scratch ext4 from tree"], cached=[False])
    custom = imagekit_json(
        "customize",
        "shape:1",
        "--store",
        store,
        "--tag",
        "shape:custom",
        "--hostname",
        "h1",
        timeout=600,
    )
    assert_build(custom, ref="shape:custom", names=["step 1"], cached=[False])
    assert custom["image"] != built["image"] and custom["digest"] != built["digest"]
