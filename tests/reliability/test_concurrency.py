"""Many processes on one store: one download per image, gc spares what is in use, no lost refs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagekit
from imagekit.store import Store
from tests.conftest import REPO, Upstream, make_qcow2
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, publish_alone

FILENAME = "Concurrent-Cloud-1.qcow2"
PULLERS = 8

# Each child prints one JSON line: what it did, or the error it met.
PULL = """
import json, sys
import imagekit
store = imagekit.open_store(sys.argv[1])
try:
    tag = sys.argv[3] if len(sys.argv) > 3 else None
    image = store.pull(imagekit.load_recipe(sys.argv[2]), tag=tag)
    print(json.dumps({"ok": image.disk_digest}))
except imagekit.ImagekitError as exc:
    print(json.dumps({"error": repr(exc)}))
"""
GC_LOOP = """
import sys, time
import imagekit
store = imagekit.open_store(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
runs = 0
while time.monotonic() < deadline:
    store.gc(remove_partial=True)
    runs += 1
print(runs)
"""
IMPORT = """
import json, sys
from pathlib import Path
import imagekit
store = imagekit.open_store(sys.argv[1])
for ref in sys.argv[3:]:
    store.import_file(Path(sys.argv[2]), ref)
print(json.dumps({"ok": sys.argv[3:]}))
"""


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


def results(children: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for child in children:
        out, _ = child.communicate(timeout=180)
        assert child.returncode == 0, out
        outputs.append(out.strip().splitlines()[-1])
    return outputs


def test_eight_processes_pulling_one_image_download_it_once(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    upstream.server.throttle(f"/pub/{FILENAME}", 4 << 20)  # ~1 s: every puller overlaps it
    recipe = upstream.recipe(FILENAME)

    outputs = results([spawn(PULL, str(store.root), str(recipe)) for _ in range(PULLERS)])

    digests = {json.loads(line).get("ok") for line in outputs}
    assert digests == {imagekit.open_store(store.root).image("test-cloud:1").disk_digest}
    gets = [e for e in upstream.server.log(f"/pub/{FILENAME}") if e.method == "GET"]
    assert len(gets) == 1, gets
    assert_consistent(store)
    figures.add("concurrent pulls of one image (all succeeded, 1 download)", PULLERS)


def test_pulls_racing_gc_lose_nothing(
    store: Store, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.qcow2"
    kept.write_bytes(image_bytes)
    old = store.import_file(kept, "old:1")
    names = [f"Race-{i}.qcow2" for i in range(4)]
    images = {}
    recipes = []
    for i, name in enumerate(names):
        images[name] = make_qcow2(tmp_path / name, size=2 << 20, seed=100 + i)
        recipes.append(publish_alone(upstream, name, images[name], f"race{i}"))
        upstream.server.throttle(f"/pub/{name}", 4 << 20)

    gc = spawn(GC_LOOP, str(store.root), "3")
    pulls = [spawn(PULL, str(store.root), str(path)) for path in recipes]
    outputs = results(pulls)
    gc_runs = int(results([gc])[0])

    for name, line in zip(names, outputs, strict=True):
        result = json.loads(line)
        assert "ok" in result, result
        assert Path(store.blob_path(result["ok"])).read_bytes() == images[name]
    assert store.image("old:1").path.read_bytes() == image_bytes
    assert store.has_blob(old.digest)
    assert sorted(ref for ref, _ in store.refs()) == ["old:1"] + [f"race{i}:1" for i in range(4)]
    assert gc_runs >= 1
    assert_consistent(store)
    figures.add("pulls racing gc (all succeeded)", len(pulls))
    figures.add("gc runs during those pulls", gc_runs)


def test_two_processes_adding_different_refs_keep_all_of_them(
    store: Store, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    disk = tmp_path / "local.qcow2"
    disk.write_bytes(image_bytes)
    upstream.publish(FILENAME, image_bytes)
    recipe = upstream.recipe(FILENAME)
    a_refs = [f"alpha:{i}" for i in range(6)]
    b_refs = [f"beta:{i}" for i in range(6)]

    children = [
        spawn(IMPORT, str(store.root), str(disk), *a_refs),
        spawn(IMPORT, str(store.root), str(disk), *b_refs),
        spawn(PULL, str(store.root), str(recipe), "gamma:1"),
    ]
    outputs = results(children)

    assert all("ok" in json.loads(line) for line in outputs), outputs
    refs = sorted(ref for ref, _ in store.refs())
    assert refs == sorted([*a_refs, *b_refs, "gamma:1"])
    assert_consistent(store)
    figures.add("processes adding refs concurrently (no ref lost)", len(children))
