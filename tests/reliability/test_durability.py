"""Commit discipline, proven by the syscalls a commit makes (strace), not by a kill.

kill -9 never loses the page cache, so the kill tests pass with every fsync removed; only a power
cut would show the difference. Instead, a child process runs the store's and the downloader's
commits under ``strace -f -y`` and the trace must show, for each file that becomes visible under
its final name: its last write, then fsync of the file, then the rename (or link) into place, then
fsync of the directory that holds the new name. This proves the order of the syscalls, which is
what the kernel needs to keep the new name and its bytes across a crash; it does not simulate one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.httpserver import LoopbackServer
from tests.reliability import figures
from tests.require import require

TRACED = "fsync,fdatasync,rename,renameat,renameat2,link,linkat,openat,write,pwrite64"
DOWNLOAD = b"downloaded bytes " * 4096
COMMITS = "commits traced in order (write, fsync, rename/link, fsync dir)"

# Every commit the store and the downloader make: layout creation (link), a blob from bytes,
# a download's resume sidecar, the downloaded file moved into blobs/, a manifest, a tag.
CHILD = """
import json, sys
from pathlib import Path
from imagekit.net.download import Downloader
from imagekit.oci.layout import Layout

root, url = Path(sys.argv[1]), sys.argv[2]
layout = Layout(root)
blob = layout.add_bytes(b"a blob from bytes", "application/octet-stream")
fetched = Downloader(layout.tmp_dir).download(url, name="traced")
disk = layout.commit_file(fetched.path, "sha256:" + fetched.digests["sha256"], "application/x")
manifest = layout.write_manifest({"name": "traced"}, [blob, disk])
layout.tag("traced:1", manifest)
print(json.dumps({"blob": blob.digest, "disk": disk.digest, "manifest": manifest.digest}))
"""


@dataclass(frozen=True)
class Call:
    """One traced syscall that succeeded: its name and the paths it acted on."""

    name: str
    paths: tuple[str, ...]


_FD = r"(?:AT_FDCWD<(?P<{0}>[^>]*)>|AT_FDCWD|\d+<(?P<{1}>[^>]*)>)"
_PATTERNS = {
    "sync": re.compile(r"(?:fsync|fdatasync)\(\d+<(?P<path>[^>]*)>\)\s+= 0"),
    "write": re.compile(r"(?:write|pwrite64)\(\d+<(?P<path>[^>]*)>, .*\)\s+= \d+"),
    "move": re.compile(r'(?:rename|link)\("(?P<old>[^"]*)", "(?P<new>[^"]*)"\)\s+= 0'),
    "moveat": re.compile(
        rf'(?:renameat2?|linkat)\({_FD.format("cwd1", "dir1")}, "(?P<old>[^"]*)", '
        rf'{_FD.format("cwd2", "dir2")}, "(?P<new>[^"]*)"(?:, \w+)?\)\s+= 0'
    ),
}


def _at(directory: str | None, path: str) -> str:
    return path if path.startswith("/") or directory is None else f"{directory}/{path}"


def parse(trace: str) -> list[Call]:
    """The successful syncs, writes and renames/links of a ``strace -f -y`` log, in order."""
    calls = []
    for line in trace.splitlines():
        if match := _PATTERNS["sync"].search(line):
            calls.append(Call("fsync", (match["path"],)))
        elif match := _PATTERNS["write"].search(line):
            calls.append(Call("write", (match["path"],)))
        elif match := _PATTERNS["move"].search(line):
            calls.append(Call("move", (match["old"], match["new"])))
        elif match := _PATTERNS["moveat"].search(line):
            old = _at(match["dir1"] or match["cwd1"], match["old"])
            new = _at(match["dir2"] or match["cwd2"], match["new"])
            calls.append(Call("move", (old, new)))
    return calls


def moves_to(calls: list[Call], dest: Path) -> list[int]:
    """Where in the trace ``dest`` got its name (by rename or link)."""
    return [i for i, c in enumerate(calls) if c.name == "move" and c.paths[1] == str(dest)]


def assert_committed(calls: list[Call], dest: Path, *, nth: int = 0) -> tuple[int, int]:
    """fsync(file) after its last write, then rename/link to ``dest``, then fsync(dest's dir).

    Checks the ``nth`` time ``dest`` got a name; returns the index of that rename/link and of
    the directory fsync that made it durable.
    """
    moves = moves_to(calls, dest)
    assert len(moves) > nth, f"{dest} was renamed/linked into place {len(moves)} times"
    at = moves[nth]
    temp = calls[at].paths[0]
    before = calls[:at]
    writes = [i for i, c in enumerate(before) if c == Call("write", (temp,))]
    syncs = [i for i, c in enumerate(before) if c == Call("fsync", (temp,))]
    assert writes, f"no write to {temp} was traced before it became {dest.name}"
    assert syncs and syncs[-1] > writes[-1], (
        f"{temp} was not fsynced after its last write, before it became {dest}"
    )
    directory = Call("fsync", (str(dest.parent),))
    after = [i for i, c in enumerate(calls) if i > at and c == directory]
    assert after, f"the directory {dest.parent} was not fsynced after {dest.name} got its name"
    return at, after[0]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[Call]]:
    require(shutil.which("strace") is not None, "strace is not installed (apt-get install strace)")
    work = tmp_path_factory.mktemp("durability")
    root, log = work / "store", work / "strace.log"
    with LoopbackServer() as server:
        server.add("disk.raw", DOWNLOAD)
        strace = [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-s",
            "4096",
            "-e",
            f"trace={TRACED}",
            "-o",
            str(log),
        ]
        done = subprocess.run(
            [*strace, sys.executable, "-c", CHILD, str(root), server.url("disk.raw")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout), parse(log.read_text())


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_creating_the_layout_syncs_file_link_then_directory(
    traced: tuple[Path, dict[str, str], list[Call]],
) -> None:
    root, _, calls = traced
    assert_committed(calls, root / "oci-layout")
    assert_committed(calls, root / "index.json")  # the empty index, linked into place
    figures.add(COMMITS, 2)


def test_a_blob_from_bytes_is_synced_renamed_then_its_directory_synced(
    traced: tuple[Path, dict[str, str], list[Call]],
) -> None:
    root, digests, calls = traced
    assert len(moves_to(calls, blob(root, digests["blob"]))) == 1
    assert_committed(calls, blob(root, digests["blob"]))
    figures.add(COMMITS)


def test_a_downloaded_blob_and_its_sidecar_follow_the_same_order(
    traced: tuple[Path, dict[str, str], list[Call]],
) -> None:
    root, digests, calls = traced
    assert digests["disk"] == "sha256:" + hashlib.sha256(DOWNLOAD).hexdigest()
    assert_committed(calls, root / "tmp" / "traced.part.json")
    at, _ = assert_committed(calls, blob(root, digests["disk"]))
    assert calls[at].paths[0] == str(root / "tmp" / "traced.part")  # the download itself
    figures.add(COMMITS, 2)


def test_a_tag_is_durable_and_names_only_durable_blobs(
    traced: tuple[Path, dict[str, str], list[Call]],
) -> None:
    root, digests, calls = traced
    index = root / "index.json"
    assert len(moves_to(calls, index)) == 2  # linked when the layout was made, then the tag
    tagged, _ = assert_committed(calls, index, nth=1)
    # Every blob the new index names was durable before the index could name it.
    durable = [assert_committed(calls, blob(root, digest))[1] for digest in digests.values()]
    assert max(durable) < tagged
    figures.add(COMMITS)
