"""kill -9 at many points of pull, gc and export: the store stays consistent and pulls resume.

Kill points are seeded (``IMAGEKIT_RELIABILITY_SEED``, printed in the summary and in every
failure message): byte offsets across the download, each run resuming where the last one died;
every step of the commit phase; random wall-clock delays across a whole throttled pull; gc in
the middle of its sweep; export before its rename.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import imagekit
from imagekit.oci.media import MEDIA_DISK_RAW, signature_tag
from imagekit.store import Store
from tests.conftest import REPO, Upstream, make_qcow2
from tests.httpserver import LoopbackServer
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, partial_size

FILENAME = "Kill-Cloud-1.qcow2"
IMAGE_PATH = f"/pub/{FILENAME}"
SEED = int(os.environ.get("IMAGEKIT_RELIABILITY_SEED") or random.SystemRandom().randrange(1 << 32))
BYTE_KILLS = 14
DELAY_KILLS = 6
MAX_DELAY = 3.0  # seconds after the child's start: start-up and evidence take ~1-2 s
CHILD = "from tests.reliability.crashchild import main; main()"
# Every step between "the bytes are complete" and "the ref is written", in pull's order.
COMMIT_POINTS = [
    "imagekit.net.partfile:Partial.sync:after",
    "imagekit.disk.header:ensure_safe:before",
    "imagekit.disk.qemu_img:info:after",
    "imagekit.oci.layout:_seal:after",
    "imagekit.oci.layout:Layout.commit_file:after",
    "imagekit.oci.layout:Layout.add_bytes:after",
    "imagekit.oci.layout:Layout.write_manifest:before",
    "imagekit.oci.layout:Layout.write_manifest:after",
    # the 5th temp file a fresh pull writes is index.json's (sidecar, evidence, config, manifest)
    "imagekit.core.atomic:write_new:after#5",
    "imagekit.oci.layout:Layout.tag:after",
]


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_qcow2(tmp_path_factory.mktemp("kill") / "big.qcow2", size=8 << 20, seed=31)


@pytest.fixture(autouse=True)
def report_seed() -> Iterator[None]:
    figures.note("kill seed", f"{SEED} (rerun with IMAGEKIT_RELIABILITY_SEED={SEED})")
    yield


def start_child(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)], cwd=REPO, stderr=subprocess.PIPE
    )


def run_killed(spec: dict[str, Any]) -> None:
    """Run a child that must die by its own SIGKILL at the kill point."""
    child = start_child(spec)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, (
        f"seed {SEED}: child {spec} exited {child.returncode} instead of being killed: "
        + err.decode(errors="replace")[-2000:]
    )
    figures.add("kills survived")


def image_gets(server: LoopbackServer) -> list[str | None]:
    return [e.range for e in server.log(IMAGE_PATH) if e.method == "GET"]


def assert_resumed_from(
    server: LoopbackServer, kept: int, context: str, *, requested: bool = False
) -> None:
    """The run's first image request asks for exactly what the partial lacks (or nothing).

    ``requested``: the run must have asked for the image (it wrote bytes of it).
    """
    gets = image_gets(server)
    assert gets or not requested, f"seed {SEED}, {context}: the image was never requested"
    if gets:
        expected = f"bytes={kept}-" if kept else None
        assert gets[0] == expected, f"seed {SEED}, {context}: kept {kept} bytes, asked {gets[0]}"


def finish(store: Store, server: LoopbackServer, recipe: Path, data: bytes, context: str) -> None:
    """The next, unkilled run completes from what the killed one left and yields the image."""
    kept = partial_size(store)
    server.clear_log()
    # one stream, like the killed runs: test_segment_kills.py kills segmented downloads
    image = Store(store.root, connections=1).pull(imagekit.load_recipe(recipe))
    assert_resumed_from(server, kept, context)
    assert image.path.read_bytes() == data
    assert_consistent(store)


def test_kill_at_byte_offsets_resumes_each_time(
    store: Store, upstream: Upstream, big_image: bytes
) -> None:
    upstream.publish(FILENAME, big_image)
    recipe = upstream.recipe(FILENAME)
    offsets = sorted(random.Random(SEED).sample(range(1, len(big_image)), BYTE_KILLS))
    spec = {"op": "pull", "store": str(store.root), "recipe": str(recipe)}
    for offset in offsets:
        kept = partial_size(store)
        upstream.server.clear_log()
        run_killed({**spec, "byte": offset})
        assert partial_size(store) == offset, f"seed {SEED}: kill at byte {offset}"
        assert_resumed_from(upstream.server, kept, f"kill at byte {offset}", requested=True)
        assert_consistent(store)
        assert store.refs() == []
    finish(store, upstream.server, recipe, big_image, "after the byte kills")
    figures.add("kill points: download byte offsets", len(offsets))


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_kill_in_the_commit_phase(
    tmp_path: Path, upstream: Upstream, big_image: bytes, point: str
) -> None:
    store = Store(tmp_path / "store")
    upstream.publish(FILENAME, big_image)
    recipe = upstream.recipe(FILENAME)
    call, _, nth = point.partition("#")
    spec = {"op": "pull", "store": str(store.root), "recipe": str(recipe), "call": call}
    run_killed({**spec, "nth": int(nth or 1)})
    assert_consistent(store)
    before = upstream.server.sent(IMAGE_PATH)
    finish(store, upstream.server, recipe, big_image, f"kill at {point}")
    # Bytes that were complete when the process died are never fetched again.
    assert before + upstream.server.sent(IMAGE_PATH) == len(big_image)
    figures.add("kill points: commit phase")


def test_kill_after_random_delays(store: Store, upstream: Upstream, big_image: bytes) -> None:
    upstream.publish(FILENAME, big_image)
    # Slow enough that DELAY_KILLS runs cannot finish the download between them: every kill lands.
    rate = len(big_image) / (2 * DELAY_KILLS * MAX_DELAY)
    upstream.server.throttle(IMAGE_PATH, rate)
    recipe = upstream.recipe(FILENAME)
    rng = random.Random(SEED + 1)
    spec = {"op": "pull", "store": str(store.root), "recipe": str(recipe)}
    delays: list[float] = []
    for _ in range(DELAY_KILLS):
        kept = partial_size(store)
        upstream.server.clear_log()
        delay = rng.uniform(0.1, MAX_DELAY)
        child = start_child(spec)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=120)
        # A finished pull (0) ends the series early; anything else is a failure of the pull.
        assert child.returncode in (0, -signal.SIGKILL), (
            f"seed {SEED}: child {spec} exited {child.returncode} after {delay:.2f} s: "
            + err.decode(errors="replace")[-2000:]
        )
        if child.returncode == 0:
            break
        delays.append(round(delay, 2))
        figures.add("kills survived")
        if image_gets(upstream.server):  # the image request had begun
            figures.add("random-delay kills during the image download")
        assert_resumed_from(upstream.server, kept, f"kill after {delay:.2f} s")
        assert_consistent(store)
    assert len(delays) == DELAY_KILLS, (
        f"seed {SEED}: only {len(delays)} of {DELAY_KILLS} kills landed (delays {delays}); "
        "the pull finished first"
    )
    upstream.server.throttle(IMAGE_PATH, None)
    finish(store, upstream.server, recipe, big_image, "after the delayed kills")
    figures.add("kill points: random delays", len(delays))
    figures.note("random kill delays (s)", ", ".join(map(str, delays)))


def test_kill_gc_mid_sweep(tmp_path: Path, image_bytes: bytes) -> None:
    rng = random.Random(SEED + 2)
    for nth in sorted(rng.sample(range(1, 12), 3)):
        store = Store(tmp_path / f"store-{nth}")
        disk = tmp_path / "disk.qcow2"
        disk.write_bytes(image_bytes)
        kept = store.import_file(disk, "kept:1")
        garbage = [
            store.add_bytes(rng.randbytes(4096), "application/octet-stream") for _ in range(12)
        ]
        run_killed({"op": "gc", "store": str(store.root), "unlink": nth})
        assert_consistent(store)
        assert store.image("kept:1").path.read_bytes() == image_bytes
        left = [g.digest for g in garbage if store.has_blob(g.digest)]
        assert 0 < len(left) < len(garbage), f"seed {SEED}: gc killed after {nth} removals"
        assert sorted(store.gc().removed_blobs) == sorted(left)
        assert not any(store.has_blob(g.digest) for g in garbage)
        assert store.has_blob(kept.disk_digest)
        assert_consistent(store)
        figures.add("kill points: gc sweep")


def stored_image(store: Store, ref: str, seed: int) -> str:
    disk = store.add_bytes(bytes([seed]) * 4096, MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": ref}, [disk])
    store.tag(ref, manifest)
    return manifest.digest


def assert_holds_exactly_what_refs_reach(store: Store) -> None:
    reached = set()
    for _, entry in store.refs():
        manifest = store.manifest(entry.digest)
        reached |= {entry.digest, manifest["config"]["digest"]}
        reached |= {layer["digest"] for layer in manifest["layers"]}
    assert {"sha256:" + p.name for p in store.blobs_dir.iterdir()} == reached


@pytest.mark.parametrize(
    ("point", "signed"),
    [
        # gc untagged a signature whose image went (index.json written), then died: no sweep
        ("imagekit.oci.layout:Layout.untag_all:after", True),
        # gc swept for the new index.json and died before recording its live set: the one
        # recorded is of the older index, which still had the removed ref
        ("imagekit.oci.memo:LiveSet.save:before", False),
        ("imagekit.oci.memo:LiveSet.save:after", False),
        # ... and before it records what the sweep left of blobs/
        ("imagekit.oci.memo:Swept.save:before", False),
    ],
)
def test_kill_gc_between_the_index_and_its_live_set(
    tmp_path: Path, point: str, signed: bool
) -> None:
    store = Store(tmp_path / "store")
    images = [stored_image(store, f"m:{n}", n) for n in range(3)]
    store.gc()  # records the live set of this index
    store.remove("m:0")
    if signed:
        signature = store.write_manifest({"name": "signature"}, [])
        store.tag(f"m:{signature_tag(images[0])}", signature)
    run_killed({"op": "gc", "store": str(store.root), "call": point})
    assert_consistent(store)
    assert all(store.has_blob(d) for d in images[1:])
    stored_image(store, "m:3", 3)  # the index gains a ref after the kill
    loose = store.add_bytes(b"written, never tagged", MEDIA_DISK_RAW)
    assert loose.digest in store.gc().removed_blobs
    assert_holds_exactly_what_refs_reach(store)
    assert store.gc().removed_blobs == []
    assert_consistent(store)
    figures.add("kill points: gc live set")


@pytest.mark.parametrize(
    "point", ["imagekit.disk.qemu_img:convert:before", "imagekit.disk.qemu_img:convert:after"]
)
def test_kill_export_leaves_old_destination_and_store(
    store: Store, tmp_path: Path, image_bytes: bytes, point: str
) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(image_bytes)
    image = store.import_file(disk, "exported:1")
    dest = tmp_path / "out" / "copy.qcow2"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous export")
    spec = {"op": "export", "store": str(store.root), "ref": "exported:1", "dest": str(dest)}
    run_killed({**spec, "call": point})
    assert dest.read_bytes() == b"the previous export"
    assert_consistent(store)
    image.export(dest, force=True)
    done = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image.path), str(dest)],
        capture_output=True,
    )
    assert done.returncode == 0, done.stdout
    figures.add("kill points: export")
