"""Every documented exit code, each from a real cause, with the one-line message docs/cli.md shows.

0, 2, 4 and 6 are exercised by tests/test_cli.py; this covers 1 (any other imagekit error),
3 (download failed), 5 (unsafe image refused), 7 (customization failed) and 130 (interrupted).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, Upstream, make_qcow2
from tests.reliability import figures

FILENAME = "Exit-Cloud-1.qcow2"


@dataclass
class Case:
    """A command line, what its environment must hold, and how it must end."""

    args: list[str]
    message: str  # a fragment of the one line on stderr
    env: dict[str, str] = field(default_factory=dict)
    interrupt_when: Callable[[], bool] | None = None  # send SIGINT once this holds


def missing_tool(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> Case:
    """1: an ImagekitError of no narrower class (qemu-img and prlimit are not on PATH)."""
    disk = tmp_path / "mine.qcow2"
    disk.write_bytes(image_bytes)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    args = ["import", str(disk), "--name", "mine:1", "--store", str(tmp_path / "store")]
    return Case(args, "is not installed; install qemu-utils", env={"PATH": str(empty)})


def not_found(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> Case:
    """3: the checksum file is a 404 (nothing is published)."""
    args = ["pull", str(upstream.recipe(FILENAME)), "--store", str(tmp_path / "store")]
    return Case(args, "HTTP 404, not found")


def unsafe_image(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> Case:
    """5: a signed qcow2 whose header names /etc/shadow as its backing file."""
    hostile = tmp_path / "hostile.qcow2"
    backing = ["-u", "-F", "raw", "-b", "/etc/shadow"]
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(hostile), "64M"], check=True
    )
    upstream.publish(FILENAME, hostile.read_bytes())
    args = ["pull", str(upstream.recipe(FILENAME)), "--store", str(tmp_path / "store")]
    return Case(args, "refusing")


def customize_failed(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> Case:
    """7: a kickstart build whose pinned installer ISO is an ISO, but not an installer.

    The build stops reading the ISO's .treeinfo, before any VM or appliance starts.
    """
    content = tmp_path / "content"
    content.mkdir()
    (content / "README").write_text("not an installer\n")
    iso = tmp_path / "plain.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), str(content)], check=True)
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    (tmp_path / "ks.ks").write_text("text\nreboot\nrootpw --lock\nautopart --type=plain\n")
    recipe = tmp_path / "ks.toml"
    recipe.write_text(
        'name = "ks"\nversion = "1"\narch = "x86_64"\n[source]\nkind = "kickstart"\n'
        f'installer = {{ path = "{iso}", sha256 = "{digest}" }}\n'
        'kickstart = "ks.ks"\ndisk = { size = "64M" }\nsyntax = "F41"\n'
    )
    return Case(["build", str(recipe), "--store", str(tmp_path / "store")], "installer ISO")


def interrupted(upstream: Upstream, image_bytes: bytes, tmp_path: Path) -> Case:
    """130: SIGINT while the download is stalled on a throttled server."""
    big = make_qcow2(tmp_path / "big.qcow2", size=8 << 20, seed=130)
    upstream.publish(FILENAME, big)
    upstream.server.throttle(f"/pub/{FILENAME}", 64 << 10)  # two minutes for the whole file
    store = tmp_path / "store"

    def downloading() -> bool:
        return any(p.stat().st_size > 0 for p in (store / "tmp").glob("*.part"))

    args = ["pull", str(upstream.recipe(FILENAME)), "--store", str(store)]
    return Case(args, "", interrupt_when=downloading)


CASES: dict[str, tuple[int, Callable[[Upstream, bytes, Path], Case]]] = {
    "other-error": (1, missing_tool),
    "download-failed": (3, not_found),
    "unsafe-image": (5, unsafe_image),
    "customize-failed": (7, customize_failed),
    "interrupted": (130, interrupted),
}


def run(case: Case) -> subprocess.CompletedProcess[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "imagekit", *case.args],
        cwd=REPO,
        env={**os.environ, **case.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if case.interrupt_when is not None:
        deadline = time.monotonic() + 60
        while not case.interrupt_when():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the pull never started downloading"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


@pytest.mark.parametrize("name", CASES)
def test_each_error_class_exits_with_its_code_and_one_line(
    name: str, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    code, make = CASES[name]
    case = make(upstream, image_bytes, tmp_path)

    done = run(case)

    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    if code == 130:
        assert lines == ["imagekit: interrupted"]
    else:
        assert lines[0].startswith("imagekit: error: ") and case.message in lines[0], lines
    figures.add("exit codes: error classes ending in their code and one line")
