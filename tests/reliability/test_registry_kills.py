"""kill -9 in the middle of a registry push or pull: the next run resumes and the store stays whole.

A child (``crashchild.py``, ops ``push`` and ``pull-oci``) SIGKILLs itself at a chosen call:
between two chunks of an upload (the next push asks the registry how much it holds and sends
the rest), inside a chunk's body and inside the final PUT that carries the last chunk (the
registry holds a torn chunk: that blob starts over), in
the middle of a layer's download (the next pull asks for the rest with Range), and at each step
of the commit phase. After each kill the store is consistent, the next run finishes in this
process, and what the registry holds pulls back into an empty store with identical digests.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagekit.core.digest import hexpart
from imagekit.net.transport import Transport
from imagekit.sources.registry import RegistryPull
from imagekit.store import Store
from tests.conftest import REPO
from tests.registry import RunningRegistry, running_registry
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent
from tests.test_registry import Chain, make_chain

CHILD = "from tests.reliability.crashchild import main; main()"
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def run_killed(spec: dict[str, Any]) -> None:
    """Run a child that must die by its own SIGKILL at the kill point."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)], cwd=REPO, stderr=subprocess.PIPE
    )
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, (
        f"child {spec['op']} exited {child.returncode} instead of being killed: "
        + err.decode(errors="replace")[-2000:]
    )
    figures.add("kills survived")


def based_chain(registry: RunningRegistry, tmp_path: Path, repository: str) -> Chain:
    """A chain whose base is already in ``repository``: a push of web:1 sends two new blobs,
    the 1 MiB overlay (many chunks) and the top config (one)."""
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work", size=8 << 20)
    chain.store.push("base:1", registry.ref(repository, "base"))
    return chain


def same_image_back(registry: RunningRegistry, chain: Chain, target: str, tmp_path: Path) -> None:
    image = Store(tmp_path / "fresh").pull(target)
    assert image.digest == chain.top.digest
    assert [d.digest for d in image.disks] == [chain.base_disk.digest, chain.overlay.digest]


def test_a_push_killed_between_chunks_sends_only_the_rest(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = based_chain(registry, tmp_path, "kills/between")
    target = registry.ref("kills/between")
    spec = {"op": "push", "store": str(chain.store.root), "ref": "web:1", "target": target}
    # Dies before the 6th PATCH: at most one went to the config, so 4+ overlay chunks are in.
    spec |= {"chunk": CHUNK, "call": "imagekit.oci.registry:Registry.patch:before", "nth": 6}
    run_killed(spec)
    assert list(chain.store.tmp_dir.glob("push-*.part.json"))
    assert_consistent(chain.store)

    mark = registry.mark()
    report = chain.store.push("web:1", target, chunk_size=CHUNK)
    assert chain.overlay.digest in report.uploaded
    assert report.uploaded_bytes <= chain.overlay.size - 4 * CHUNK + 4096  # + the config
    patches = [r for r in registry.since(mark) if r.method == "PATCH"]
    assert 0 < len(patches) <= math.ceil(chain.overlay.size / CHUNK) - 4 + 1
    assert not list(chain.store.tmp_dir.glob("push-*"))
    same_image_back(registry, chain, target, tmp_path)


def test_a_push_killed_inside_a_chunk_starts_that_blob_again(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = based_chain(registry, tmp_path, "kills/torn")
    target = registry.ref("kills/torn")
    spec = {"op": "push", "store": str(chain.store.root), "ref": "web:1", "target": target}
    # One 4 MiB chunk holds the whole overlay, so its upload is POST + one PUT carrying it; the
    # child dies inside that PUT's body, once 1 MiB of it is sent (the config never gets there).
    spec |= {"chunk": 4 << 20, "upload_byte": 1 << 20}
    run_killed(spec)
    assert_consistent(chain.store)
    report = chain.store.push("web:1", target, chunk_size=4 << 20)
    assert chain.overlay.digest in report.uploaded
    assert registry.blob_data(chain.overlay.digest).read_bytes() == (
        chain.store.blob_path(chain.overlay.digest).read_bytes()
    )
    assert not list(chain.store.tmp_dir.glob("push-*"))
    same_image_back(registry, chain, target, tmp_path)


def test_a_push_killed_inside_its_final_put_finishes_cleanly(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = based_chain(registry, tmp_path, "kills/final")
    target = registry.ref("kills/final")
    chunk, piece = 512 << 10, 64 << 10
    assert chain.overlay.size > 2 * chunk + 2 * piece  # PATCH, PATCH, then a PUT of 2+ pieces
    spec = {"op": "push", "store": str(chain.store.root), "ref": "web:1", "target": target}
    # Dies one piece into the final PUT's body, after both PATCHes were answered and recorded.
    spec |= {"chunk": chunk, "piece": piece, "upload_byte": 2 * chunk + piece}
    run_killed(spec)
    assert list(chain.store.tmp_dir.glob("push-*.part.json"))
    assert_consistent(chain.store)

    mark = registry.mark()
    report = chain.store.push("web:1", target, chunk_size=chunk)
    # distribution 2.8 cancels an upload whose torn PUT left it longer than its URL says: the
    # overlay goes up again from the start, and arrives whole.
    assert chain.overlay.digest in report.uploaded
    assert report.uploaded_bytes >= chain.overlay.size
    # The killed run's torn PUT may be logged late (when the registry sees the connection gone).
    finished = [r for r in registry.since(mark) if r.method == "PUT" and "digest=" in r.path]
    assert finished and finished[-1].status == 201
    assert registry.blob_data(chain.overlay.digest).read_bytes() == (
        chain.store.blob_path(chain.overlay.digest).read_bytes()
    )
    assert not list(chain.store.tmp_dir.glob("push-*"))
    same_image_back(registry, chain, target, tmp_path)


def test_a_pull_killed_mid_blob_resumes_with_range(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work", size=8 << 20)
    source = registry.ref("kills/pull")
    chain.store.push("web:1", source)
    store = Store(tmp_path / "b")
    spec = {"op": "pull-oci", "store": str(store.root), "source": source}
    # Only the 8 MiB base layer can hold 3 MiB: the kill lands inside its download.
    run_killed(spec | {"blob_byte": 3 << 20})
    base_part = store.tmp_dir / f"oci-{hexpart(chain.base_disk.digest)}.part"
    assert base_part.stat().st_size >= 3 << 20
    kept = sum(p.stat().st_size for p in store.tmp_dir.glob("oci-*.part"))
    assert list(store.blobs_dir.iterdir()) == [] and store.refs() == []
    assert_consistent(store)

    mark = registry.mark()
    pulled = store.pull_registry(source, RegistryPull(transport=Transport(backoff=0.01)))
    assert pulled.report.resumed_bytes == kept
    assert pulled.report.fetched_bytes + kept == sum(
        store.blob_path(d).stat().st_size for d in pulled.report.fetched
    )
    # The killed run's GET may be logged late (when the registry sees the connection gone).
    gets = [r.status for r in registry.since(mark) if r.path.endswith(chain.base_disk.digest)]
    assert gets[-1] == 206 and gets.count(206) == 1
    assert pulled.image.digest == chain.top.digest
    assert not list(store.tmp_dir.glob("oci-*"))
    assert_consistent(store)


@pytest.mark.parametrize(
    "point",
    [
        "imagekit.oci.download:commit:after",
        "imagekit.oci.layout:Layout.add_bytes:after",
        "imagekit.oci.layout:Layout.tag:before",
    ],
)
def test_a_pull_killed_while_committing_completes_next_time(
    registry: RunningRegistry, tmp_path: Path, point: str
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    source = registry.ref("kills/commit")
    chain.store.push("web:1", source)
    store = Store(tmp_path / "b")
    run_killed({"op": "pull-oci", "store": str(store.root), "source": source, "call": point})
    assert store.refs() == []
    assert_consistent(store)
    image = store.pull(source)
    assert image.digest == chain.top.digest and image.ref == "commit:1"
    assert_consistent(store)
