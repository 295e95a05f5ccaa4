"""A recipe's ``[test]`` boots the built image before it is tagged; a recorded pass boots nothing.

The base is the bootable disk of tests/bootdisk.py named by a ``file://`` URL with its sha256
pinned: no appliance launch and no network, so each build costs exactly its boots (~10 s each
under TCG). The module makes two: one with a marker the guest never prints, one that passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.build import BuildResult
from imagekit.core.digest import file_digest
from imagekit.errors import BootError, RefNotFoundError
from imagekit.oci.media import MEDIA_EVIDENCE_BOOT_LOG
from imagekit.recipe import load_recipe_file
from imagekit.store import Store
from tests.bootdisk import MARKER, bootdisk_fixture  # noqa: F401
from tests.events import Events

REF = "booted:1"


def write_recipe(directory: Path, disk: Path, marker: str) -> Path:
    path = directory / "booted.toml"
    path.write_text(
        f"""name = "booted"
version = "1"
arch = "x86_64"
[source]
kind = "http"
url = "{disk.as_uri()}"
sha256 = "{file_digest(disk).removeprefix("sha256:")}"

[test]
marker = "{marker}"
timeout = "2m"
memory = "256M"
"""
    )
    return path


@dataclass
class Builds:
    store: Store
    recipe: Path
    failure: BootError
    failed_events: Events
    passed: BuildResult
    passed_events: Events


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, bootdisk: Path) -> Builds:
    """A build whose test fails (the marker never comes), then the fixed one: two boots."""
    directory = tmp_path_factory.mktemp("testblock")
    store = Store(directory / "store")
    recipe = write_recipe(directory, bootdisk, "this line is never printed")
    failed_events = Events()
    with pytest.raises(BootError) as failure:
        store.build(load_recipe_file(recipe), progress=failed_events)
    recipe = write_recipe(directory, bootdisk, MARKER)
    passed_events = Events()
    passed = store.build(load_recipe_file(recipe), progress=passed_events)
    return Builds(store, recipe, failure.value, failed_events, passed, passed_events)


def test_a_failed_test_fails_the_build_and_tags_nothing(builds: Builds) -> None:
    assert builds.failed_events.boots == 1 and builds.failed_events.launches == 0
    message = str(builds.failure)
    assert message.startswith(f"{REF} [test]: ")
    assert "bootdisk: ready" in message  # the console's tail says what the guest did
    assert builds.failure.exit_code == 8


def test_the_test_runs_after_the_last_layer_and_is_recorded(builds: Builds) -> None:
    image, events = builds.passed.image, builds.passed_events
    assert events.boots == 1 and events.launches == 0
    assert [layer.cached for layer in builds.passed.layers] == [True]  # fixing the test: no fetch
    assert image.ref == REF
    record = image.provenance["test"]
    assert record["passed"] is True and record["reason"] == "marker"
    assert record["marker"] == MARKER
    assert record["seconds"] > 0 and record["accel"] in ("kvm", "tcg")
    assert record["disk"] == image.disk_digest
    logs = [
        layer for layer in image.manifest["layers"] if layer["mediaType"] == MEDIA_EVIDENCE_BOOT_LOG
    ]
    assert [log["digest"] for log in logs] == [record["console_log"]["digest"]]
    assert MARKER in builds.store.read_blob(logs[0]["digest"]).decode()
    assert image.disks[-1].digest == image.disk_digest  # the log is evidence, not a disk


def test_a_build_with_a_recorded_pass_boots_nothing(builds: Builds) -> None:
    store, recipe = builds.store, load_recipe_file(builds.recipe)
    events = Events()
    again = store.build(recipe, progress=events)
    assert again.image.digest == builds.passed.image.digest
    assert events.boots == 0 and events.launches == 0

    store.remove(REF)  # the tag is gone, the pass is still recorded under the build's identity
    with pytest.raises(RefNotFoundError):
        store.image(REF)
    events = Events()
    retagged = store.build(recipe, progress=events)
    assert events.boots == 0 and events.launches == 0
    assert retagged.image.provenance["test"] == builds.passed.image.provenance["test"]

    events = Events()
    store.build(recipe, use_cache=False, progress=events)  # --no-cache proves it again
    assert events.boots == 1
