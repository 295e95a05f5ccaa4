"""Hostile disk images with valid signed digests: inspection refuses them before qemu-img runs.

Every file here passes verification (its digest is in a CHECKSUM signed by the pinned key), so the
refusal must come from diskformat's header check. A ``qemu-img`` wrapper first on PATH logs every
run: none may happen for a refused file, and nothing may be left in blobs/ or tmp/.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import imagekit
from imagekit.errors import UnsafeImageError
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2, run_qemu_img
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent

MiB = 1 << 20


def created(tmp: Path, fmt: str, *options: str, size: str = "64M") -> bytes:
    path = tmp / f"made.{fmt}"
    run_qemu_img("create", "-q", "-f", fmt, *options, str(path), size)
    return path.read_bytes()


def patched(data: bytes, *patches: tuple[int, bytes]) -> bytes:
    out = bytearray(data)
    for offset, value in patches:
        out[offset : offset + len(value)] = value
    return bytes(out)


def with_backing(tmp: Path, name: bytes) -> bytes:
    """A plain qcow2 whose header names ``name`` (at 0x8000, inside the header cluster)."""
    return patched(
        created(tmp, "qcow2"), (8, struct.pack(">QI", 0x8000, len(name))), (0x8000, name)
    )


def iso(tmp: Path) -> bytes:
    (tmp / "content").mkdir()
    (tmp / "content" / "README").write_text("not a disk\n")
    path = tmp / "made.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(path), str(tmp / "content")],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


# name -> (builder, the format the recipe promises)
HOSTILE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "backing file, absolute path": (lambda t: with_backing(t, b"/etc/shadow"), "qcow2"),
    "backing file, relative path": (lambda t: with_backing(t, b"../../../etc/passwd"), "qcow2"),
    "backing file, json: protocol": (
        lambda t: with_backing(t, b'json:{"file.driver":"file","file.filename":"/etc/shadow"}'),
        "qcow2",
    ),
    "backing file, nbd URL": (lambda t: with_backing(t, b"nbd://127.0.0.1:10809/x"), "qcow2"),
    "backing file, http URL": (lambda t: with_backing(t, b"http://127.0.0.1:1/x.qcow2"), "qcow2"),
    "backing file with a NUL": (lambda t: with_backing(t, b"x\0/etc/shadow"), "qcow2"),
    "backing file set by qemu-img": (
        lambda t: created(t, "qcow2", "-u", "-F", "raw", "-b", "/etc/hostname"),
        "qcow2",
    ),
    "external data file": (
        lambda t: created(t, "qcow2", "-o", f"data_file={t / 'data.raw'}"),
        "qcow2",
    ),
    "huge L1 table": (
        lambda t: patched(created(t, "qcow2"), (36, struct.pack(">I", 1 << 30))),
        "qcow2",
    ),
    "huge refcount table": (
        lambda t: patched(created(t, "qcow2"), (56, struct.pack(">I", 1 << 24))),
        "qcow2",
    ),
    "L1 table past the end of the file": (
        lambda t: patched(created(t, "qcow2"), (40, struct.pack(">Q", 1 << 40))),
        "qcow2",
    ),
    "absurd snapshot count": (
        lambda t: patched(created(t, "qcow2"), (60, struct.pack(">I", 1 << 20))),
        "qcow2",
    ),
    "unknown incompatible feature": (
        lambda t: patched(created(t, "qcow2"), (72, struct.pack(">Q", 1 << 40))),
        "qcow2",
    ),
    "encrypted (LUKS)": (
        lambda t: created(
            t,
            "qcow2",
            "--object",
            "secret,id=sec0,data=secret",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            size="16M",
        ),
        "qcow2",
    ),
    "truncated qcow2 header": (lambda t: created(t, "qcow2")[:40], "qcow2"),
    "qcow2 published as raw": (lambda t: make_qcow2(t / "q.qcow2", size=MiB, seed=3), "raw"),
    "raw published as qcow2": (lambda t: os.urandom(MiB), "qcow2"),
    "VMDK where qcow2 was promised": (lambda t: created(t, "vmdk", size="16M"), "qcow2"),
    "VMDK flat descriptor as raw": (
        lambda t: created(t, "vmdk", "-o", "subformat=monolithicFlat", size="1M"),
        "raw",
    ),
    "VHDX where qcow2 was promised": (lambda t: created(t, "vhdx", size="16M"), "qcow2"),
    "ISO where qcow2 was promised": (iso, "qcow2"),
    "qcow (v1) where qcow2 was promised": (
        lambda t: patched(created(t, "qcow2"), (4, struct.pack(">I", 1))),
        "qcow2",
    ),
}


@pytest.fixture
def qemu_img_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a logging ``qemu-img`` first on PATH; the log lists every run."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "qemu-img.log"
    log.write_text("")
    real = subprocess.run(["sh", "-c", "command -v qemu-img"], capture_output=True, text=True)
    wrapper = bindir / "qemu-img"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real.stdout.strip()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_the_wrapper_sees_qemu_img_runs(
    store: Store, upstream: Upstream, image_bytes: bytes, qemu_img_log: Path
) -> None:
    """A control: a good image is inspected by qemu-img (through the wrapper) after the check."""
    upstream.publish("good.qcow2", image_bytes)
    store.pull(imagekit.load_recipe(upstream.recipe("good.qcow2")))
    runs = qemu_img_log.read_text().splitlines()
    assert runs and all("--force-share" in run for run in runs), runs


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_image_is_refused_by_a_full_pull(
    store: Store, upstream: Upstream, tmp_path: Path, case: str, qemu_img_log: Path
) -> None:
    build, promised = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    data = build(work)
    qemu_img_log.write_text("")  # building it used qemu-img; the pull must not
    upstream.publish("hostile.img", data)
    extra = f'format = "{promised}"\n'
    recipe = imagekit.load_recipe(upstream.recipe("hostile.img", extra=extra))

    with pytest.raises(UnsafeImageError, match="refusing") as exc:
        store.pull(recipe)

    assert "hostile.img" in str(exc.value) or ".part" in str(exc.value)  # names the file
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.tmp_dir.glob("*.part*")) == []
    assert store.refs() == []
    assert qemu_img_log.read_text() == "", "qemu-img ran before the header check refused"
    assert_consistent(store)
    figures.add("hostile images refused by a full pull")
