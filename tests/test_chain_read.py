"""Export's read of a layer chain: every level through io_uring, the same bytes as before.

``qemu_img.convert`` (what ``imagekit export`` and a copied VM disk run) opens a chain with one
``file.aio=io_uring`` per level, found through the headers; where io_uring is refused it reads
through qemu's thread pool as before. The chains are thin layers made the way a step makes them
(``create_overlay``, qemu-io writes, ``compact_layer``), on a raw and on a qcow2 base.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from imagekit.disk import qemu_img
from tests.layerbytes import Write, metadata_like, write_with_qemu_io
from tests.require import require

SIZE = 16 << 20
LAYERS = 3


def make_chain(directory: Path, base_format: str) -> Path:
    """A base of random data and three thin layers of scattered records and a 1 MiB file."""
    directory.mkdir()
    base = directory / f"base.{base_format}"
    rng = random.Random(base_format)
    if base_format == "raw":
        base.write_bytes(rng.randbytes(SIZE))
    else:
        create = ["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(SIZE)]
        subprocess.run(create, check=True)
        write_with_qemu_io(base, [Write(0, rng.randbytes(SIZE // 2))])
    parent, parent_format = base.name, base_format
    for number in range(1, LAYERS + 1):
        overlay, layer = directory / f"overlay{number}.qcow2", directory / f"layer{number}.qcow2"
        qemu_img.create_overlay(overlay, parent, parent_format)
        spots = [rng.randrange(0, SIZE - 4096, 4096) for _ in range(40)]
        changes = [Write(spot, metadata_like(rng, rng.choice((1024, 4096)))) for spot in spots]
        changes.append(Write(rng.randrange(0, SIZE - (1 << 20), 4096), rng.randbytes(1 << 20)))
        write_with_qemu_io(overlay, changes)
        qemu_img.compact_layer(overlay, layer, parent, parent_format)
        overlay.unlink()
        parent, parent_format = layer.name, "qcow2"
    return directory / parent


def read_as_before(top: Path, dest: Path) -> bytes:
    """The chain read the way export read it before: ``-f qcow2``, qemu's default aio."""
    command = ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(top), str(dest)]
    subprocess.run(command, check=True)
    return dest.read_bytes()


@pytest.fixture(autouse=True)
def io_uring_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process does: io_uring not yet found refused."""
    monkeypatch.setattr(qemu_img, "_io_uring_refused", False)


@pytest.mark.parametrize("base_format", ["raw", "qcow2"])
def test_a_chain_is_read_through_io_uring_at_every_level(tmp_path: Path, base_format: str) -> None:
    top = make_chain(tmp_path / "chain", base_format)

    options = qemu_img.read_options(top, "qcow2")
    qemu_img.convert(top, "qcow2", tmp_path / "export.raw", "raw")

    assert options is not None
    assert options.split(",").count("file.aio=io_uring") == 1  # the top's own file
    assert options.count("file.aio=io_uring") == LAYERS + 1  # and each level below it
    assert f"{'backing.' * LAYERS}file.aio=io_uring" in options
    assert not qemu_img._io_uring_refused
    exported = (tmp_path / "export.raw").read_bytes()
    assert exported == read_as_before(top, tmp_path / "before.raw")
    assert len(exported) == SIZE


def test_where_io_uring_is_refused_the_chain_reads_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A qemu-img whose io_uring_setup fails (strace injects ENOSYS, as a seccomp filter would)."""
    strace, real = shutil.which("strace"), shutil.which("qemu-img")
    require(strace is not None, "strace is not installed (scripts/setup.sh installs it)")
    top = make_chain(tmp_path / "chain", "qcow2")
    wrapper = tmp_path / "bin" / "qemu-img"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f"#!/bin/sh\nexec {strace} -f -qq -o /dev/null -e trace=io_uring_setup "
        f'-e inject=io_uring_setup:error=ENOSYS {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{Path(str(real)).parent}")

    qemu_img.convert(top, "qcow2", tmp_path / "export.raw", "raw")

    assert qemu_img._io_uring_refused  # the next convert in this process asks no more
    exported = (tmp_path / "export.raw").read_bytes()
    assert exported == read_as_before(top, tmp_path / "before.raw")


def test_a_parent_qemu_would_open_some_other_way_is_read_as_before(tmp_path: Path) -> None:
    layer = tmp_path / "layer.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw"]
    subprocess.run([*create, "-b", "nbd://127.0.0.1:1/disk", str(layer), "1M"], check=True)
    missing = tmp_path / "missing.qcow2"
    subprocess.run([*create, "-b", "gone.raw", str(missing), "1M"], check=True)

    assert qemu_img.read_options(layer, "qcow2") is None
    assert qemu_img.read_options(missing, "qcow2") is None


def test_a_comma_in_the_path_is_escaped_for_qemu(tmp_path: Path) -> None:
    directory = tmp_path / "a,b"
    directory.mkdir()
    disk = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)

    options = qemu_img.read_options(disk, "qcow2")
    qemu_img.convert(disk, "qcow2", tmp_path / "out.raw", "raw")

    assert options is not None and f"file.filename={tmp_path}/a,,b/disk.qcow2," in options
    assert (tmp_path / "out.raw").read_bytes() == bytes(1 << 20)
