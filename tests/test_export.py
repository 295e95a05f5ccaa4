"""Export writes into what it is given, and destroys nothing it was not asked to replace.

Real qemu-img throughout. Device nodes are private copies made with mknod (of /dev/full and
/dev/null) and a private symlink to /proc/self/fd/1 (what /dev/stdout is), so a regression
replaces a node under tmp_path, never the machine's own /dev entries.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.errors import ImagekitError, RecipeError
from imagekit.image import Image
from imagekit.store import Store

REF = "exported:1"


@pytest.fixture
def image(store: Store, tmp_path: Path, image_bytes: bytes) -> Image:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(image_bytes)
    return store.import_file(disk, REF)


@pytest.fixture
def raw_bytes(image: Image, tmp_path: Path) -> bytes:
    """The image's disk as raw bytes, made by qemu-img directly (the reference)."""
    raw = tmp_path / "reference.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image.path), str(raw)], check=True
    )
    return raw.read_bytes()


def cli(*args: str, store: Store, stdout: int | None = subprocess.PIPE) -> tuple[int, bytes, str]:
    done = subprocess.run(
        [sys.executable, "-m", "imagekit", args[0], "--store", str(store.root), *args[1:]],
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    return done.returncode, done.stdout or b"", done.stderr.decode()


def same_disk(a: Path, a_format: str, b: Path) -> bool:
    done = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", a_format, "-F", "qcow2", str(a), str(b)],
        capture_output=True,
    )
    return done.returncode == 0


def one_line_error(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagekit: error: "), stderr
    assert ".part" not in stderr and "Traceback" not in stderr
    for word in words:
        assert word in lines[0], stderr


def node(path: Path, major: int, minor: int) -> Path:
    """A private character device node (``mknod``), skipped where that is not permitted."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("mknod is not permitted here (needs root or CAP_MKNOD)")
    return path


def attach_loop(backing: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Attach ``backing`` to a loop device (root and losetup, else skip): the device, and a
    private block node for it under ``tmp_path`` (so a regression replaces only that node)."""
    done = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"no loop device: {done.stderr.decode().strip()}")
    device = Path(done.stdout.decode().strip())
    private = tmp_path / "blockdev"
    rdev = os.stat(device).st_rdev
    try:
        os.mknod(private, 0o600 | stat.S_IFBLK, os.makedev(os.major(rdev), os.minor(rdev)))
    except PermissionError:
        subprocess.run(["losetup", "-d", str(device)], check=True)
        pytest.skip("mknod is not permitted here (needs root or CAP_MKNOD)")
    return device, private


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB loop device, by its private node; detached afterwards."""
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\xaa" * (8 << 20))
    device, private = attach_loop(backing, tmp_path)
    try:
        yield private
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


def test_a_block_device_is_written_in_place(
    image: Image, loop_device: Path, raw_bytes: bytes, tmp_path: Path
) -> None:
    image.export(loop_device, disk_format="raw")

    assert stat.S_ISBLK(os.stat(loop_device).st_mode)
    with loop_device.open("rb") as f:
        assert f.read(len(raw_bytes)) == raw_bytes
    image.export(loop_device)  # qcow2 onto the device, as qemu-img formats it
    assert same_disk(loop_device, "qcow2", image.path)


def test_raw_export_to_a_too_small_device_says_so(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "64M"], check=True)
    image = store.import_file(big, "big:1")
    backing = tmp_path / "small.img"
    backing.write_bytes(b"\0" * (1 << 20))
    device, private = attach_loop(backing, tmp_path)
    try:
        with pytest.raises(RecipeError, match="holds 1048576 bytes but the image needs 67108864"):
            image.export(private, disk_format="raw")
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)
    assert stat.S_ISBLK(os.lstat(private).st_mode)


def test_a_full_character_device_reports_enospc_and_stays_a_device(
    store: Store, image: Image, tmp_path: Path
) -> None:
    full = node(tmp_path / "full", 1, 7)  # what /dev/full is

    code, _, stderr = cli("export", REF, "-o", str(full), "--format", "raw", store=store)

    assert code == 1
    one_line_error(stderr, str(full), "no space left", "incomplete")
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert not list(store.tmp_dir.glob("new-*"))  # the converted temp is gone too


def test_a_character_device_is_written_into(store: Store, image: Image, tmp_path: Path) -> None:
    null = node(tmp_path / "null", 1, 3)  # what /dev/null is

    code, _, stderr = cli("export", REF, "-o", str(null), store=store)

    assert code == 0, stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert not list(store.tmp_dir.glob("new-*"))


def test_a_fifo_is_streamed_into(image: Image, raw_bytes: bytes, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()

    image.export(fifo, disk_format="raw")

    reader.join(timeout=60)
    assert received == [raw_bytes]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_stdout_carries_the_image_and_nothing_else(
    store: Store, image: Image, raw_bytes: bytes, tmp_path: Path
) -> None:
    code, out, stderr = cli("export", REF, "-o", "-", "--format", "raw", store=store)
    assert code == 0, stderr
    assert out == raw_bytes
    assert "stdout" in stderr

    code, out, stderr = cli("export", REF, "-o", "-", store=store)  # qcow2 to a pipe
    assert code == 0, stderr
    received = tmp_path / "received.qcow2"
    received.write_bytes(out)
    assert same_disk(received, "qcow2", image.path)

    redirected = tmp_path / "redirected.raw"
    with redirected.open("wb") as f:  # stdout redirected to a file, as `> file` does
        code, _, stderr = cli(
            "export", REF, "-o", "-", "--format", "raw", store=store, stdout=f.fileno()
        )
    assert code == 0, stderr
    assert redirected.read_bytes() == raw_bytes


def test_a_terminal_is_refused(image: Image) -> None:
    controller, terminal = os.openpty()
    try:
        with pytest.raises(RecipeError, match="terminal"):
            image.export(os.ttyname(terminal))
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_symlink_to_stdout_is_followed_and_kept(
    store: Store, image: Image, raw_bytes: bytes, tmp_path: Path
) -> None:
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")  # what /dev/stdout is

    code, out, stderr = cli("export", REF, "-o", str(stdout), "--format", "raw", store=store)

    assert code == 0, stderr
    assert out == raw_bytes
    assert stdout.is_symlink() and os.readlink(stdout) == "/proc/self/fd/1"


def test_a_link_to_a_redirected_stdout_writes_into_the_open_file(
    store: Store, image: Image, raw_bytes: bytes, tmp_path: Path
) -> None:
    """/dev/stdout with stdout redirected to a file names that open file: it is written into,
    needing no --force, and the link is never replaced (with --force neither)."""
    for name, fd_link in (("stdout", "/proc/self/fd/1"), ("fd1", "/dev/fd/1")):
        link = tmp_path / name
        link.symlink_to(fd_link)
        redirected = tmp_path / f"{name}.raw"
        with redirected.open("wb") as f:
            args = ("export", REF, "-o", str(link), "--format", "raw", "--force")
            code, _, stderr = cli(*args, store=store, stdout=f.fileno())
        assert code == 0, stderr
        assert redirected.read_bytes() == raw_bytes
        assert link.is_symlink() and os.readlink(link) == fd_link


def test_a_symlink_to_a_file_is_replaced_only_with_force_and_its_target_never(
    store: Store, image: Image, tmp_path: Path
) -> None:
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    link = tmp_path / "vm.qcow2"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.qcow2"
    dangling.symlink_to(tmp_path / "nowhere" / "x")

    for path in (link, dangling):
        code, _, stderr = cli("export", REF, "-o", str(path), store=store)
        assert code == 2
        one_line_error(stderr, str(path), "symlink", "--force")
        assert path.is_symlink()
    assert target.read_bytes() == b"keep me"

    image.export(link, force=True)

    assert not link.is_symlink() and same_disk(link, "qcow2", image.path)
    assert target.read_bytes() == b"keep me"


def test_an_existing_file_needs_force(store: Store, image: Image, tmp_path: Path) -> None:
    dest = tmp_path / "old.qcow2"
    dest.write_bytes(b"the previous export")

    code, _, stderr = cli("export", REF, "-o", str(dest), store=store)
    assert code == 2
    one_line_error(stderr, str(dest), "--force")
    with pytest.raises(RecipeError, match="force"):
        image.export(dest)
    assert dest.read_bytes() == b"the previous export"

    code, _, stderr = cli("export", REF, "-o", str(dest), "--force", store=store)
    assert code == 0, stderr
    assert same_disk(dest, "qcow2", image.path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_missing_directory_is_one_clear_line(store: Store, image: Image, tmp_path: Path) -> None:
    dest = tmp_path / "no" / "such" / "dir" / "vm.qcow2"

    code, _, stderr = cli("export", REF, "-o", str(dest), store=store)

    assert code == 2
    one_line_error(stderr, str(dest.parent), "does not exist")
    assert not (tmp_path / "no").exists()


def test_paths_inside_the_store_are_refused(store: Store, image: Image, tmp_path: Path) -> None:
    into_store = tmp_path / "store-link"
    into_store.symlink_to(store.root)
    blob = image.path
    for dest in (
        store.root / "vm.qcow2",
        store.tmp_dir / "vm.qcow2",
        into_store / "blobs" / "vm.qcow2",
        blob,
    ):
        with pytest.raises(RecipeError, match="inside the store"):
            image.export(dest, force=True)
    with pytest.raises(RecipeError, match="inside the store"):
        image.export(into_store / "vm.qcow2", link=True, force=True)
    assert store.fsck().ok
    assert not (store.root / "vm.qcow2").exists()


def test_directories_sockets_and_links_to_devices_are_refused(image: Image, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="is a directory"):
        image.export(tmp_path)
    sock = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    try:
        with pytest.raises(RecipeError, match="not a file, block device"):
            image.export(sock, force=True)
    finally:
        server.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(RecipeError, match="--link"):
        image.export(fifo, link=True)
    with pytest.raises(RecipeError, match="--link"):
        image.export("-", link=True)


def test_a_reader_that_goes_away_is_a_clear_error(image: Image, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with fifo.open("rb") as f:
            f.read(4096)

    reader = threading.Thread(target=read_a_little)
    reader.start()
    with pytest.raises(ImagekitError, match="closed it after"):
        image.export(fifo, disk_format="raw")
    reader.join(timeout=60)
