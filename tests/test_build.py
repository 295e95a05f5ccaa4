"""imagekit build: scratch base + cached qcow2 layers, against the real appliance and qemu-img.

Launches are the expensive part under TCG (~15 s each), so one module-scoped build is shared and
each test counts the launches it adds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import imagekit
from imagekit.build import BuildResult
from imagekit.guest import appliance as guest
from imagekit.oci.media import PARENT_ANNOTATION
from imagekit.store import Store
from tests.conftest import Upstream
from tests.events import Events
from tests.guestimage import build_guest_tree

pytestmark = pytest.mark.guestfs

STEP_ONE = """
[[customize]]
hostname = "web1"
mkdir = ["/srv/app"]
write = ["/srv/app/motd:hello from step one"]
"""
STEP_TWO = """
[[customize]]
append_line = ["/etc/hosts:10.0.0.1 db"]
size = "320M"
"""


@dataclass
class Built:
    store: Store
    directory: Path
    recipe: Path
    first: BuildResult
    launches: int


def write_recipe(directory: Path, steps: str, name: str = "web") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "tree"\n'
        'size = "256M"\nfilesystem = "ext4"\nlabel = "root"\n' + steps
    )
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    directory = tmp_path_factory.mktemp("build")
    build_guest_tree(directory / "tree")
    recipe = write_recipe(directory, STEP_ONE + STEP_TWO)
    store = Store(directory / "store")
    events = Events()
    first = store.build(imagekit.load_recipe(recipe), progress=events)
    return Built(store, directory, recipe, first, events.launches)


def read_back(path: Path, files: list[str]) -> dict[str, str]:
    """Open the chain read-only in one launch and read ``files`` from the guest."""
    handle = guest.launch([guest.Drive(path, "qcow2", readonly=True)])
    try:
        guest.mount_inspected(handle)
        return {name: handle.cat(name) for name in files}
    finally:
        handle.close()


def test_build_makes_one_layer_per_step_on_a_scratch_base(built: Built) -> None:
    image = built.first.image
    assert built.launches == 3  # scratch disk, step one, step two: one launch each
    assert [layer.cached for layer in built.first.layers] == [False, False, False]
    assert image.ref == "web:1"
    disks = image.disks
    assert len(disks) == 3
    # Each overlay names its parent blob by file name, and the descriptor says so too.
    for parent, child in itertools.pairwise(disks):
        assert child.annotations[PARENT_ANNOTATION] == parent.digest
        info = json.loads(
            subprocess.run(
                [
                    "qemu-img",
                    "info",
                    "--output=json",
                    "-U",
                    str(built.store.blob_path(child.digest)),
                ],
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        assert info["backing-filename"] == parent.digest.removeprefix("sha256:")
    assert image.provenance["inspection"]["distro"] == "fedora"
    assert image.provenance["steps"][0]["step"]["hostname"] == "web1"
    contents = read_back(image.path, ["/etc/hostname", "/srv/app/motd", "/etc/hosts"])
    assert contents["/etc/hostname"].strip() == "web1"
    assert contents["/srv/app/motd"] == "hello from step one"
    assert contents["/etc/hosts"].endswith("10.0.0.1 db\n")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(image.path)],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    assert info["virtual-size"] == 320 << 20
    # A layer stores what its step changed, not a copy of its parent.
    assert disks[1].size < min(disks[0].size, 2 << 20)


def test_unchanged_rebuild_launches_nothing(built: Built) -> None:
    events = Events()

    again = built.store.build(imagekit.load_recipe(built.recipe), progress=events)

    assert events.launches == 0
    assert [layer.cached for layer in again.layers] == [True, True, True]
    assert again.image.digest == built.first.image.digest
    assert again.image.cached


def test_changing_the_last_step_rebuilds_only_that_layer(built: Built) -> None:
    base = built.first.image.disks[0]
    base_bytes = hashlib.sha256(built.store.blob_path(base.digest).read_bytes()).hexdigest()
    recipe = write_recipe(built.directory, STEP_ONE + STEP_TWO.replace("db", "cache"), "web2")
    events = Events()

    changed = built.store.build(imagekit.load_recipe(recipe), progress=events)

    assert events.launches == 1
    assert [layer.cached for layer in changed.layers] == [True, True, False]
    assert changed.image.disks[:2] == built.first.image.disks[:2]
    assert changed.image.disks[2].digest != built.first.image.disks[2].digest
    # The base blob was never written: its bytes still hash to its name.
    assert "sha256:" + base_bytes == base.digest
    assert built.store.fsck().ok


def test_a_failed_step_leaves_no_layer_and_no_ref(built: Built) -> None:
    recipe = write_recipe(
        built.directory, STEP_ONE + '[[customize]]\nrun_command = ["exit 3"]\n', "broken"
    )
    blobs_before = set(built.store.blobs_dir.iterdir())

    with pytest.raises(imagekit.CustomizeError):
        built.store.build(imagekit.load_recipe(recipe))

    assert "broken:1" not in [ref for ref, _ in built.store.refs()]
    assert set(built.store.blobs_dir.iterdir()) == blobs_before
    assert not [p for p in built.store.tmp_dir.iterdir() if p.name.startswith("new-")]


def test_export_flattens_the_chain_and_link_makes_a_thin_overlay(
    built: Built, tmp_path: Path
) -> None:
    image = built.first.image
    flat = image.export(tmp_path / "web.qcow2")
    raw = image.export(tmp_path / "web.raw", disk_format="raw")
    linked = image.export(tmp_path / "web-vm.qcow2", link=True)

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(flat)],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    assert "backing-filename" not in info
    for exported, fmt in ((flat, "qcow2"), (raw, "raw"), (linked, "qcow2")):
        subprocess.run(
            ["qemu-img", "compare", "-U", "-f", fmt, "-F", "qcow2", str(exported), str(image.path)],
            check=True,
            capture_output=True,
        )
    assert linked.stat().st_size < 1 << 20


def test_customize_command_adds_a_layer_to_a_stored_image(built: Built) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagekit",
            "customize",
            "web:1",
            "--store",
            str(built.store.root),
            "--tag",
            "web:custom",
            "--hostname",
            "adhoc",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    image = built.store.image("web:custom")
    assert output["ref"] == "web:custom"
    assert image.disks[:3] == built.first.image.disks
    assert image.provenance["steps"][-1]["step"] == {"hostname": "adhoc"}


def test_http_base_with_a_step(built: Built, upstream: Upstream, tmp_path: Path) -> None:
    flat = built.first.image.export(tmp_path / "base.qcow2")
    upstream.publish("Base.qcow2", flat.read_bytes())
    recipe = upstream.recipe("Base.qcow2", name="fromhttp", extra='[[customize]]\nhostname = "h"\n')
    store = Store(tmp_path / "store")

    result = store.build(imagekit.load_recipe(recipe))

    assert [layer.cached for layer in result.layers] == [False, False]
    assert result.image.verification == "signed"
    # The untagged base manifest stays alive as the built manifest's subject.
    assert result.image.manifest["subject"]["digest"] != result.image.digest
    assert store.gc().removed_blobs == []
    assert store.fsck().ok
    upstream.server.clear_log()
    edited = recipe.read_text().replace('hostname = "h"', 'hostname = "h2"')
    recipe.write_text(edited)
    again = store.build(imagekit.load_recipe(recipe))
    # Editing the step reruns only the step: the base is neither re-fetched nor re-verified.
    assert [layer.cached for layer in again.layers] == [True, False]
    assert upstream.server.log() == []
