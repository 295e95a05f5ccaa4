"""Two processes building the same recipe into one store at once: one build, two refs.

Both builders start together (``python -m imagekit build RECIPE --store S --tag ... --json``).
The promise (issue #6): the step runs once, the second builder waits for the first one's layer and
reuses it, both refs resolve to the same disks, the store is consistent, ``tmp/`` is empty, and a
third build launches nothing. Builds are not bit-identical (ext4 timestamps, UUIDs), so without
the per-build-key lock the two builders would each make their own layers.

Launches are counted where they happen, not from the builders' own ``cached`` flags: the
builders' libguestfs runs qemu through a wrapper (``LIBGUESTFS_HV``) that logs every boot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import guestfs
import pytest

import imagekit
from imagekit.oci.media import MEDIA_DISK_QCOW2, MEDIA_DISK_RAW
from imagekit.store import Store
from tests.conftest import REPO
from tests.events import Events
from tests.guestimage import build_guest_tree
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent
from tests.test_build import write_recipe

pytestmark = pytest.mark.guestfs

STEP = """
[[customize]]
hostname = "race1"
write = ["/etc/motd:built by whichever builder won"]
"""


def boot_counter(directory: Path) -> tuple[Path, Path]:
    """A qemu for LIBGUESTFS_HV that appends a line to a log per boot (a run with -kernel).

    libguestfs also runs its qemu to query features (-help, -version, QMP); those boot nothing.
    """
    real = guestfs.GuestFS(python_return_dict=True).get_hv()
    log = directory / "boots.log"
    log.write_text("")
    wrapper = directory / "qemu-counting"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for arg; do [ "$arg" = -kernel ] && echo "$$" >> {log}; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, log


def test_two_processes_building_one_recipe_share_one_layer_per_step(tmp_path: Path) -> None:
    directory = tmp_path
    hv, boots_log = boot_counter(directory)
    build_guest_tree(directory / "tree")
    recipe = write_recipe(directory, STEP, name="race")
    store_root = directory / "store"
    Store(store_root)  # create the layout once, before the race

    started = time.monotonic()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imagekit",
                "build",
                str(recipe),
                "--store",
                str(store_root),
                "--tag",
                f"race:{who}",
                "--json",
            ],
            cwd=REPO,
            env={**os.environ, "LIBGUESTFS_HV": str(hv)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-2000:]
        outputs.append(json.loads(out))
    elapsed = time.monotonic() - started

    # Each layer (scratch base, step 1) was built by exactly one builder; the other reused it.
    reports = [[(layer["digest"], layer["cached"]) for layer in o["layers"]] for o in outputs]
    assert [d for d, _ in reports[0]] == [d for d, _ in reports[1]], reports
    for position in range(len(reports[0])):
        assert sorted(r[position][1] for r in reports) == [False, True], reports
    built = sum(not cached for r in reports for _, cached in r)
    assert built == 2, reports  # scratch + step, once each
    # What really booted: one appliance for the scratch disk, one for the step, in all.
    launches = len(boots_log.read_text().splitlines())
    assert launches == 2, (launches, reports)

    store = Store(store_root)
    images = [store.image("race:a"), store.image("race:b")]
    assert [d.digest for d in images[0].disks] == [d.digest for d in images[1].disks]
    disk_blobs = {
        layer["digest"]
        for _, descriptor in store.refs()
        for layer in store.manifest(descriptor.digest)["layers"]
        if layer["mediaType"] in (MEDIA_DISK_QCOW2, MEDIA_DISK_RAW)
    }
    assert len(disk_blobs) == 2  # one base + one layer per step, shared by both refs
    assert_consistent(store)
    assert list(store.tmp_dir.iterdir()) == []

    # A third build afterwards is fully cached: no launch at all.
    events = Events()
    third = store.build(imagekit.load_recipe(recipe), tag="race:c", progress=events)
    assert events.launches == 0
    assert all(layer.cached for layer in third.layers)
    assert [d.digest for d in third.image.disks] == [d.digest for d in images[0].disks]
    assert_consistent(store)

    figures.add("concurrent builds: builders", 2)
    figures.add("concurrent builds: appliance launches", launches)
    figures.note("concurrent builds: wall time", f"{elapsed:.1f} s for both builders")
