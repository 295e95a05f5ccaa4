"""kill -9 in the middle of a segmented download (several Range connections at once).

The next pull resumes from the segments the sidecar records as complete: the image hashes
right, no recorded segment is fetched again, and the store stays consistent throughout.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import imagekit
from imagekit.store import Store
from tests.conftest import REPO, Upstream, make_qcow2
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent
from tests.reliability.test_kill import CHILD, SEED

FILENAME = "Segments-Cloud-1.qcow2"
IMAGE_PATH = f"/pub/{FILENAME}"
SEGMENT = 1 << 20  # the child's segment size: the 8 MiB image has nine
RATE = 2 << 20  # bytes/s per response: a segment takes half a second, four run at once


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_qcow2(tmp_path_factory.mktemp("segkill") / "img.qcow2", size=8 << 20, seed=41)


def child_spec(store: Store, recipe: Path, **extra: Any) -> dict[str, Any]:
    spec = {"op": "pull", "store": str(store.root), "recipe": str(recipe)}
    return {**spec, "connections": 4, "segment": SEGMENT, **extra}


def start(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)], cwd=REPO, stderr=subprocess.PIPE
    )


def recorded(store: Store) -> set[int]:
    """The segments the sidecar of the store's partial download says are complete."""
    done: set[int] = set()
    for sidecar in store.tmp_dir.glob("*.part.json"):
        done |= set(json.loads(sidecar.read_text()).get("segments", {}).get("done", []))
    return done


def segment_bytes(segments: set[int], total: int) -> int:
    return sum(min(SEGMENT, total - i * SEGMENT) for i in segments)


def resume(store: Store, upstream: Upstream, recipe: Path, image: bytes, done: set[int]) -> None:
    """An unkilled pull finishes: right bytes, and none of the recorded segments again."""
    server = upstream.server
    server.throttle(IMAGE_PATH, None)
    server.clear_log()
    pulled = store.pull(imagekit.load_recipe(recipe))
    assert pulled.path.read_bytes() == image
    asked = {e.range for e in server.log(IMAGE_PATH) if e.method == "GET"}
    for i in done:
        assert f"bytes={i * SEGMENT}-{min((i + 1) * SEGMENT, len(image)) - 1}" not in asked
    assert server.sent(IMAGE_PATH) == 1 + len(image) - segment_bytes(done, len(image))
    assert_consistent(store)


def test_kill_after_a_recorded_segment_resumes_with_the_rest(
    store: Store, upstream: Upstream, image: bytes
) -> None:
    upstream.publish(FILENAME, image)
    upstream.server.throttle(IMAGE_PATH, RATE)
    recipe = upstream.recipe(FILENAME)
    # the first _record writes the fresh sidecar, the second the first complete segment
    spec = child_spec(store, recipe, call="imagekit.net.segments:_Fetch._record:after", nth=2)
    child = start(spec)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    figures.add("kills survived")
    done = recorded(store)
    assert 0 < len(done) < -(-len(image) // SEGMENT)
    assert_consistent(store)
    assert store.refs() == []

    resume(store, upstream, recipe, image, done)
    figures.add("kill points: segmented download")


def test_kills_at_random_delays_never_lose_a_recorded_segment(
    store: Store, upstream: Upstream, image: bytes
) -> None:
    upstream.publish(FILENAME, image)
    upstream.server.throttle(IMAGE_PATH, RATE / 4)  # slow: each run dies mid-download
    recipe = upstream.recipe(FILENAME)
    rng = random.Random(SEED + 7)
    done: set[int] = set()
    for _ in range(3):
        child = start(child_spec(store, recipe))
        time.sleep(rng.uniform(1.0, 4.0))
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
        figures.add("kills survived")
        now = recorded(store)
        assert done <= now, f"seed {SEED}: recorded segments {sorted(done - now)} were lost"
        done = now
        assert_consistent(store)
    resume(store, upstream, recipe, image, done)
    figures.add("kill points: segmented download", 3)
