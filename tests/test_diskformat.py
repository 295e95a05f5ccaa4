"""Header inspection against images made by the real qemu-img, then patched to be hostile."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from imagekit.disk import header as diskformat
from imagekit.disk import qemu_img
from imagekit.errors import ImagekitError, UnsafeImageError
from imagekit.progress import ProgressEvent
from tests.conftest import run_qemu_img

MiB = 1024 * 1024


def qcow2(tmp_path: Path, name: str = "disk.qcow2", *options: str) -> Path:
    path = tmp_path / name
    run_qemu_img("create", "-q", "-f", "qcow2", *options, str(path), "64M")
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def set_backing(path: Path, name: bytes) -> None:
    """Point the header at ``name``, stored at 0x8000 inside the 64 KiB header cluster."""
    patch(path, 8, struct.pack(">QI", 0x8000, len(name)))
    patch(path, 0x8000, name)


def refused(path: Path, fmt: str = "qcow2", **kwargs: Path) -> str:
    with pytest.raises(UnsafeImageError) as exc:
        diskformat.ensure_safe(path, fmt, **kwargs)
    return str(exc.value)


@pytest.mark.parametrize(("compat", "version"), [("1.1", 3), ("0.10", 2)])
def test_plain_qcow2_is_safe(tmp_path: Path, compat: str, version: int) -> None:
    header = diskformat.ensure_safe(
        qcow2(tmp_path, "disk.qcow2", "-o", f"compat={compat}"), "qcow2"
    )
    assert header.format == "qcow2"
    assert header.virtual_size == 64 * MiB
    assert header.backing_file is None
    assert header.details["version"] == version


def test_raw_with_mbr_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0x80, b"\0\0\0", 0x83, b"\0\0\0", 2048, 4096)
    mbr[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(mbr) + bytes(4 * MiB - 512))
    header = diskformat.ensure_safe(path, "raw")
    assert header.format == "raw"
    assert header.virtual_size is None


@pytest.mark.parametrize(
    "name",
    [
        b"/etc/shadow",
        b"../x",
        b'json:{"file.filename":"/etc/shadow"}',
        b"nbd://127.0.0.1/x",
        b"http://127.0.0.1/x",
    ],
)
def test_hostile_backing_file_is_refused(tmp_path: Path, name: bytes) -> None:
    path = qcow2(tmp_path)
    set_backing(path, name)
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "x").write_bytes(b"")  # "../x" from the store resolves to an existing file
    assert diskformat.probe(path).backing_file == name.decode()
    assert repr(name.decode()) in refused(path)
    assert "not a plain file name" in refused(path, allowed_backing_dir=store)


def test_external_data_file_is_refused(tmp_path: Path) -> None:
    path = qcow2(tmp_path, "disk.qcow2", "-o", f"data_file={tmp_path / 'data.raw'}")
    assert diskformat.probe(path).data_file == str(tmp_path / "data.raw")
    assert "external data file" in refused(path)


def test_encrypted_qcow2_is_refused(tmp_path: Path) -> None:
    path = qcow2(
        tmp_path,
        "disk.qcow2",
        "--object",
        "secret,id=sec0,data=secret",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    )
    assert "encryption (LUKS" in refused(path)


def test_qcow2_claimed_as_raw_is_refused(tmp_path: Path) -> None:
    message = refused(qcow2(tmp_path), "raw")
    assert "detected format 'qcow2'" in message
    assert "'raw' was promised" in message


def test_raw_claimed_as_qcow2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(MiB))
    assert "detected format 'raw' (no known magic)" in refused(path)


@pytest.mark.parametrize("fmt", ["vmdk", "vhdx", "iso"])
def test_other_formats_where_qcow2_was_promised_are_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    if fmt == "iso":
        (tmp_path / "content").mkdir()
        (tmp_path / "content" / "README").write_text("hello\n")
        subprocess.run(
            ["genisoimage", "-quiet", "-o", str(path), str(tmp_path / "content")],
            check=True,
            capture_output=True,
        )
    else:
        run_qemu_img("create", "-q", "-f", fmt, str(path), "16M")
    assert f"detected format {fmt!r}" in refused(path)


def test_flat_vmdk_message_names_its_extent_files(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    run_qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(path), "1M")
    message = refused(path, "raw")
    assert "createType 'monolithicFlat'" in message
    assert "'disk-flat.qcow2'" in message
    assert "unsupported format 'vmdk'" in refused(path, "vmdk")


def test_truncated_qcow2_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    path.write_bytes(qcow2(tmp_path, "full.qcow2").read_bytes()[:40])
    assert "truncated header" in refused(path)


def test_absurd_l1_table_is_refused(tmp_path: Path) -> None:
    path = qcow2(tmp_path)
    patch(path, 36, struct.pack(">I", 2**30))
    assert "8589934592-byte L1 table" in refused(path)


def test_overlay_on_a_blob_in_the_allowed_dir(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    parent = qcow2(store, "0123abcd")
    overlay = store / "overlay.qcow2"
    qemu_img.create_overlay(overlay, parent.name, "qcow2")
    header = diskformat.ensure_safe(overlay, "qcow2", allowed_backing_dir=store)
    assert (header.backing_file, header.backing_format) == ("0123abcd", "qcow2")
    assert "a backing file '0123abcd'" in refused(overlay)
    parent.unlink()
    assert "not a file in" in refused(overlay, allowed_backing_dir=store)


def test_create_overlay_refuses_a_path_as_parent(tmp_path: Path) -> None:
    with pytest.raises(ImagekitError, match="named plainly"):
        qemu_img.create_overlay(tmp_path / "o.qcow2", "/etc/shadow", "raw")


def test_info_reports_format_and_size(tmp_path: Path) -> None:
    info = qemu_img.info(qcow2(tmp_path), "qcow2")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * MiB


def test_info_runs_under_the_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_img, "ADDRESS_SPACE", 4 * MiB)
    with pytest.raises(UnsafeImageError, match="qemu-img info"):
        qemu_img.info(qcow2(tmp_path), "qcow2")


def test_info_failure_is_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(MiB))
    with pytest.raises(UnsafeImageError, match="not in qcow2 format"):
        qemu_img.info(path, "qcow2")


def test_check_and_convert(tmp_path: Path) -> None:
    src = qcow2(tmp_path)
    assert qemu_img.check(src, "qcow2")["check-errors"] == 0
    events: list[ProgressEvent] = []
    dst = tmp_path / "out.raw"
    qemu_img.convert(src, "qcow2", dst, "raw", progress=events.append)
    assert dst.stat().st_size == 64 * MiB
    assert events[-1].done == 100
    assert diskformat.probe(dst).format == "raw"
