"""kill -9 during ``imagekit build`` (issue #6): the store stays consistent, the next build works.

A child (``crashchild.py``, op ``build``) builds a scratch + one-step recipe and SIGKILLs itself at
a chosen point: inside the scratch disk's appliance session, inside the step's appliance session,
right after the step's layer is committed to ``blobs/`` (before the build cache knows it), and
right after the build cache entry is written (before the manifest and the tag). After each kill:
the store is consistent (``storecheck.assert_consistent``), no qemu of the dead builder outlives it
by more than a few seconds (libguestfs' recovery process kills it), the next build in this process
completes, and ``store.gc()`` removes the dead builder's ``tmp/new-<pid>-*`` leftovers.

Every launch costs ~15-30 s under TCG, so the kill points share one store: the scratch base is
built once (the first test's recovery build, or the ``based`` fixture), and the later kill points
each use a step of their own on top of it, so each needs one launch to die in and at most one to
recover.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import imagekit
from imagekit.build import BuildCache
from imagekit.core.digest import hexpart
from imagekit.oci.media import MEDIA_DISK_QCOW2, MEDIA_DISK_RAW
from imagekit.store import Store
from tests.conftest import REPO
from tests.events import Events
from tests.guestimage import build_guest_tree
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent
from tests.test_build import write_recipe

pytestmark = pytest.mark.guestfs

CHILD = "from tests.reliability.crashchild import main; main()"
QEMU_GRACE = 10.0  # seconds a dead builder's qemu may outlive it
SURVIVALS: list[float] = []  # how long each killed builder's qemu outlived it


@dataclass(frozen=True)
class Site:
    directory: Path
    store: Store
    base_recipe: Path  # the scratch source alone: its image is the base every step builds on


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    directory = tmp_path_factory.mktemp("build-kills")
    build_guest_tree(directory / "tree")
    return Site(directory, Store(directory / "store"), write_recipe(directory, "", name="base"))


@pytest.fixture(scope="module")
def based(site: Site) -> Site:
    """The site with its scratch base built (a cache hit when the scratch kill test ran first)."""
    site.store.build(imagekit.load_recipe(site.base_recipe))
    return site


def step_recipe(site: Site, name: str) -> Path:
    """A scratch + one-step recipe whose step (and so build key) belongs to ``name`` alone."""
    step = f'[[customize]]\nhostname = "{name}"\nwrite = ["/etc/motd:killed at {name}"]\n'
    return write_recipe(site.directory, step, name=name)


def _qemus_of(pid: int) -> set[int]:
    """Live qemu-system processes started by ``pid`` or running on its ``tmp/new-<pid>-*`` files."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if b"qemu-system" not in cmdline or state == "Z":
            continue
        if int(ppid) == pid or f"new-{pid}-".encode() in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_killed(site: Site, recipe: Path, call: str, tmp_path: Path) -> tuple[int, int]:
    """Build ``recipe`` in a child that dies at ``call``; return (child pid, qemus it left)."""
    spec: dict[str, Any] = {
        "op": "build",
        "store": str(site.store.root),
        "recipe": str(recipe),
        "call": call,
    }
    log = tmp_path / "child.stderr"
    with log.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec)], cwd=REPO, stderr=err
        )
        seen: set[int] = set()
        deadline = time.monotonic() + 300
        while child.poll() is None:
            seen |= _qemus_of(child.pid)
            assert time.monotonic() < deadline, f"child {spec} still running"
            time.sleep(0.1)
    assert child.returncode == -signal.SIGKILL, (
        f"child {spec} exited {child.returncode} instead of being killed: "
        + log.read_text(errors="replace")[-2000:]
    )
    died = time.monotonic()
    while True:
        left = {p for p in seen if _alive(p)} | _qemus_of(child.pid)
        if not left:
            break
        assert time.monotonic() - died < QEMU_GRACE, (
            f"qemu {sorted(left)} of the killed builder {child.pid} still running "
            f"{QEMU_GRACE:.0f} s after it died"
        )
        time.sleep(0.1)
    if seen:
        SURVIVALS.append(time.monotonic() - died)
        figures.note(
            "build kills: longest a qemu outlived its killed builder", f"{max(SURVIVALS):.1f} s"
        )
    figures.add("build kills survived")
    return child.pid, len(seen)


def leftovers(store: Store, pid: int) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir() if p.name.startswith(f"new-{pid}-"))


def disk_layers(store: Store, ref: str) -> list[str]:
    manifest = store.manifest(store.resolve(ref).digest)
    return [
        layer["digest"]
        for layer in manifest["layers"]
        if layer["mediaType"] in (MEDIA_DISK_QCOW2, MEDIA_DISK_RAW)
    ]


def gc_and_check(store: Store, pid: int, ref: str, layers: int) -> None:
    """gc removes the dead builder's temps and nothing the recovered ref uses."""
    report = store.gc()
    assert leftovers(store, pid) == [], report
    assert len(disk_layers(store, ref)) == layers
    assert_consistent(store)


def test_kill_in_the_scratch_disk_session(site: Site, tmp_path: Path) -> None:
    recipe = step_recipe(site, "scratch")
    pid, qemus = run_killed(site, recipe, "imagekit.guest.appliance:launch:after", tmp_path)
    assert qemus >= 1  # the kill did land inside the appliance session
    # The half-made scratch disk is still in tmp/, named for the dead builder.
    assert [n for n in leftovers(site.store, pid) if n.endswith(".qcow2.part")], leftovers(
        site.store, pid
    )
    assert_consistent(site.store)
    assert site.store.refs() == []

    # The next build makes the base (one launch: nothing of the dead one's is reused).
    events = Events()
    result = site.store.build(imagekit.load_recipe(site.base_recipe), progress=events)
    assert events.launches == 1
    assert not result.layers[0].cached
    assert_consistent(site.store)
    gc_and_check(site.store, pid, "base:1", layers=1)


STEP_POINTS = {
    # inside the step's appliance session: the overlay is half-written in tmp/new-<pid>-*/
    "step-session": "imagekit.guest.appliance:launch:after",
    # the layer is in blobs/, but the build cache does not know it and no ref uses it
    "layer-committed": "imagekit.oci.layout:Layout.commit_file:after",
    # the build cache names the layer; no manifest, no tag
    "cache-put": "imagekit.build.cache:BuildCache.put:after",
}


@pytest.mark.parametrize("point", list(STEP_POINTS))
def test_kill_while_building_a_step(based: Site, point: str, tmp_path: Path) -> None:
    store = based.store
    recipe_path = step_recipe(based, point.replace("-", ""))
    recipe = imagekit.load_recipe(recipe_path)
    base_disks = disk_layers(store, "base:1")
    pid, qemus = run_killed(based, recipe_path, STEP_POINTS[point], tmp_path)
    assert_consistent(store)
    with pytest.raises(imagekit.ImagekitError):
        store.resolve(recipe.ref)
    if point == "step-session":
        assert qemus >= 1
        assert leftovers(store, pid), "the step's work dir should outlive the kill"
    cache = BuildCache(store)
    entries = {p.name for p in cache.directory.iterdir()}

    # The next build: a cache hit when the dead builder got as far as the cache, else one launch.
    events = Events()
    result = store.build(recipe, progress=events)
    launches = events.launches
    assert launches == (0 if point == "cache-put" else 1), (point, result.layers)
    assert [layer.cached for layer in result.layers] == [True, point == "cache-put"]
    key = result.image.config["steps"][-1]["key"]
    assert (hexpart(key) in entries) == (point == "cache-put"), (point, sorted(entries))
    disks = disk_layers(store, recipe.ref)
    assert disks[:1] == base_disks and len(disks) == 2
    # The step's record (what it found and printed) survived too, so a cached layer's image
    # says the same as a freshly built one.
    assert result.image.config["inspection"], result.image.config
    assert result.image.config["steps"][-1].get("inspection"), result.image.config["steps"]
    assert_consistent(store)
    gc_and_check(store, pid, recipe.ref, layers=2)
    assert disk_layers(store, "base:1") == base_disks
