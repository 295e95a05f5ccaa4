"""The one place imagekit runs qemu-img, always with an explicit ``-f`` so qemu never guesses.

Crafted headers have made qemu-img burn CPU and memory before, so commands that read images not
yet trusted (``info``, ``check``) run under prlimit (30 s of CPU, 1 GiB of address space) and a
wall-clock timeout, and fail with UnsafeImageError. Run them only after
``diskformat.ensure_safe``: the limits contain qemu, the header check keeps it from opening
other files. Commands on store content (``create_overlay``, ``convert``) fail with ImagekitError.

Layers are thin in two stages (docs/build.md, "The layer format"). A step writes into an overlay
of 64 KiB clusters split into 32 subclusters (``extended_l2``), so a guest write allocates and
copies 2 KiB of its cluster, not 64 KiB. ``compact_layer`` then rewrites that overlay as the
stored layer: only what it allocated, in clusters of the size that keeps qcow2's fixed tables
smallest for the disk's virtual size, zlib-compressed when the layer is small.

``convert`` reads every level of a chain through io_uring (``file.aio=io_uring``): a thin chain
is thousands of small extents, each its own read, and the default thread pool spends a futex
round trip on each (benchmarks/README.md, ``layers.py``). Where io_uring is refused (a seccomp
filter, ``kernel.io_uring_disabled``) it reads as before, through the thread pool.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagekit.disk.header import SUPPORTED_FORMATS, is_plain_name, probe
from imagekit.errors import ImagekitError, UnsafeImageError
from imagekit.progress import ProgressCallback, ProgressEvent

CPU_SECONDS = 30
ADDRESS_SPACE = 1 << 30
TIMEOUT = 60  # wall clock: catches a qemu-img blocked on I/O, which burns no CPU
OVERLAY_OPTIONS = "cluster_size=65536,extended_l2=on"  # 2 KiB subclusters; qemu >= 5.2
LAYER_CLUSTER_SIZES = (2048, 4096, 8192, 16384, 32768, 65536)
COMPRESS_BELOW = 1 << 20  # bytes of an uncompressed layer; benchmarks/README.md has the trade
MAX_CHAIN = 256  # levels ``convert`` follows to name each one's aio; deeper reads as before
# qemu's words when it cannot set up a ring, and when it was built without io_uring
_IO_URING_REFUSED = ("Unable to use io_uring", "aio=io_uring was specified, but is not supported")
_io_uring_refused = False  # set once a qemu-img here could not use io_uring: ask no more
_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def info(path: Path, fmt: str) -> dict[str, object]:
    """``qemu-img info`` as JSON (``virtual-size``, ``format``, ...) of an untrusted image."""
    what = f"qemu-img info of {path} as {fmt}"
    args = ("info", "--output=json", "--force-share", "-f", fmt, _filename(path))
    return _json_object(_run(args, what=what, untrusted=True, timeout=TIMEOUT), what)


def check(path: Path, fmt: str) -> dict[str, object]:
    """``qemu-img check`` report; leaks only waste space and pass, corruptions are refused."""
    what = f"qemu-img check of {path} as {fmt}"
    args = ("check", "--output=json", "--force-share", "-f", fmt, _filename(path))
    out = _run(args, what=what, untrusted=True, timeout=TIMEOUT, _ok_code=(0, 2, 3))
    report = _json_object(out, what)
    if report.get("corruptions"):
        raise UnsafeImageError(
            f"{what} found {report['corruptions']} corruptions; fetch a fresh copy of the image"
        )
    return report


def create_overlay(path: Path, backing: str, backing_fmt: str) -> None:
    """Create a qcow2 layer on ``backing``, a plain file name qemu resolves next to ``path``."""
    _check_parent(path, backing, backing_fmt)
    args = ("create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, "-F", backing_fmt, "-b", backing)
    _run((*args, _filename(path)), what=f"qemu-img create of overlay {path}", timeout=TIMEOUT)


def compact_layer(overlay: Path, layer: Path, backing: str, backing_fmt: str) -> None:
    """Rewrite a step's ``overlay`` as ``layer`` on the same ``backing``: its own data only.

    A layer under ``COMPRESS_BELOW`` is written again with zlib-compressed clusters: there
    qcow2's fixed tables outweigh the data, and reading it back costs little; a bigger layer
    stays uncompressed, because decompressing is what would slow reads of a long chain. The
    same overlay bytes give the same layer bytes: clusters are written in order (no ``-W``),
    and the cluster size and whether to compress follow from the overlay alone.
    """
    _check_parent(layer, backing, backing_fmt)
    cluster = layer_cluster_size(probe(overlay).virtual_size or 0)
    _write_layer(overlay, layer, backing, backing_fmt, cluster, compress=False)
    if layer.stat().st_size < COMPRESS_BELOW:
        _write_layer(overlay, layer, backing, backing_fmt, cluster, compress=True)


def _write_layer(
    overlay: Path, layer: Path, backing: str, backing_fmt: str, cluster: int, *, compress: bool
) -> None:
    options = f"cluster_size={cluster},compression_type=zlib"
    args = ["convert", "-q", "-f", "qcow2", "-O", "qcow2", "-o", options, "-B", backing]
    args += ["-F", backing_fmt, *(["-c"] if compress else []), _filename(overlay), _filename(layer)]
    _run(args, what=f"compacting {overlay} into a layer")


def layer_cluster_size(virtual_size: int) -> int:
    """The cluster size that makes a layer's fixed tables smallest for ``virtual_size``.

    Every layer holds a header, a refcount table and a refcount block (a cluster each) and an
    L1 table of ``64 * virtual_size / cluster_size**2`` bytes (one 8-byte entry per L2 table of
    ``cluster_size / 8`` entries), in whole clusters: 2 KiB below 704 MiB, 8 KiB at 20 GiB.
    """

    def fixed(cluster: int) -> int:
        l1_bytes = 64 * virtual_size // (cluster * cluster)
        return 3 * cluster + max(1, -(-l1_bytes // cluster)) * cluster

    return min(LAYER_CLUSTER_SIZES, key=fixed)


def _check_parent(path: Path, backing: str, backing_fmt: str) -> None:
    if not is_plain_name(backing) or backing_fmt not in SUPPORTED_FORMATS:
        raise ImagekitError(
            f"refusing to layer {path} on {backing!r} ({backing_fmt}): a layer's parent must be "
            "a qcow2 or raw file named plainly in the same directory"
        )


def rebase(path: Path, backing: str, backing_fmt: str, *, safe: bool) -> None:
    """Give a qcow2 layer the parent ``backing`` (named as in ``create_overlay``).

    ``safe`` copies into the layer every cluster it does not hold in which the old and the new
    parent differ, so the disk it shows stays the same; unsafe only rewrites the header, for a
    new parent known to show the same disk wherever the layer holds nothing.
    """
    if not is_plain_name(backing) or backing_fmt not in SUPPORTED_FORMATS:
        raise ImagekitError(f"refusing to rebase {path} on {backing!r} ({backing_fmt})")
    mode = () if safe else ("-u",)
    args = ("rebase", "-q", *mode, "-f", "qcow2", "-F", backing_fmt, "-b", backing)
    _run((*args, _filename(path)), what=f"qemu-img rebase of {path} on {backing}")


def create(path: Path, fmt: str, size: int) -> None:
    """A fresh, empty disk of ``size`` bytes (an installer's target)."""
    _run(("create", "-q", "-f", fmt, _filename(path), str(size)), what=f"qemu-img create of {path}")


def resize(path: Path, size: int) -> None:
    """Grow a qcow2 layer's virtual size; growing the guest's partitions is the appliance's job."""
    _run(("resize", "-q", "-f", "qcow2", _filename(path), str(size)), what=f"resize of {path}")


def create_linked_overlay(path: Path, backing: Path, backing_fmt: str) -> None:
    """A thin overlay for a local VM, backed by a stored blob through its absolute path."""
    args = ("create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", _filename(backing))
    _run((*args, _filename(path)), what=f"qemu-img create of linked overlay {path}")


def convert(
    src: Path,
    src_fmt: str,
    dst: Path,
    dst_fmt: str,
    *,
    compress: bool = False,
    sparse: bool = True,
    progress: ProgressCallback | None = None,
) -> None:
    """Convert a trusted image; ``sparse=False`` writes zeros out, ``compress`` is qcow2 only."""
    args = ["convert", "-O", dst_fmt]
    if compress:
        args.append("-c")
    if not sparse:
        args += ["-S", "0"]
    if progress is not None:
        args.append("-p")
    what = f"qemu-img convert of {src} to {dst}"
    global _io_uring_refused
    if not _io_uring_refused and (source := read_options(src, src_fmt)) is not None:
        try:
            _run([*args, "--image-opts", source, _filename(dst)], what=what, **_out(progress, dst))
            return
        except ImagekitError as exc:  # refused at open, before qemu-img creates ``dst``
            if not any(words in str(exc) for words in _IO_URING_REFUSED):
                raise
            _io_uring_refused = True
    _run([*args, "-f", src_fmt, _filename(src), _filename(dst)], what=what, **_out(progress, dst))


def read_options(path: Path, fmt: str) -> str | None:
    """``--image-opts`` that open ``path`` as ``fmt`` and each level of its chain via io_uring.

    qemu takes one ``file.aio`` per level (``backing.file.aio`` for the parent, and so on) and
    refuses a level that does not exist, so the chain is followed here through the headers.
    None when a level is not a file named plainly or by absolute path (qemu would open it some
    other way), or the chain is deeper than ``MAX_CHAIN``: read it as before.
    """
    levels, current = 0, Path(_filename(path))
    while (parent := probe(current).backing_file) is not None:
        current = current.parent / parent  # an absolute ``parent`` replaces the directory
        plain = is_plain_name(parent) or os.path.isabs(parent)
        levels += 1
        if not plain or not current.is_file() or levels > MAX_CHAIN:
            return None
    name = _escape(_filename(path))
    options = [f"driver={fmt}", "file.driver=file", f"file.filename={name}"]
    options += ["backing." * level + "file.aio=io_uring" for level in range(levels + 1)]
    return ",".join(options)


def _escape(value: str) -> str:
    """A value inside ``--image-opts``: qemu reads a doubled comma as one."""
    return value.replace(",", ",,")


def _out(progress: ProgressCallback | None, dst: Path) -> dict[str, Any]:
    if progress is None:
        return {}
    return {"_out": _progress_reader(progress, dst), "_out_bufsize": 0}


def _filename(path: Path) -> str:
    """Absolute, so qemu never reads a ``proto:`` or ``json:`` prefix into a relative name."""
    return os.path.abspath(path)


def _run(
    args: Sequence[str],
    *,
    what: str,
    untrusted: bool = False,
    timeout: float | None = None,
    **options: Any,
) -> str:
    """Run qemu-img; ``untrusted`` adds the resource limits and makes failures UnsafeImageError."""
    import sh  # loaded when qemu-img runs: a cache-hit pull never needs it

    error = UnsafeImageError if untrusted else ImagekitError
    try:
        if untrusted:
            limits = (f"--cpu={CPU_SECONDS}", f"--as={ADDRESS_SPACE}")
            command = sh.Command("prlimit").bake(*limits, "--", "qemu-img")
        else:
            command = sh.Command("qemu-img")
        return str(command(*args, _timeout=timeout, _tty_out=False, **options))
    except sh.CommandNotFound as exc:
        raise ImagekitError(
            f"{what}: {exc} is not installed; install qemu-utils (qemu-img) and util-linux "
            "(prlimit)"
        ) from exc
    except sh.TimeoutException as exc:
        raise error(f"{what} was killed after {timeout} s without finishing") from exc
    except sh.ErrorReturnCode as exc:
        stderr = exc.stderr.decode("utf-8", "replace").strip()[-500:]
        if exc.exit_code < 0:
            stderr = f"killed by signal {-exc.exit_code} (over its CPU or memory limit?) {stderr}"
        raise error(f"{what} failed (exit {exc.exit_code}): {stderr}") from exc


def _json_object(text: str, what: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UnsafeImageError(f"{what} printed no JSON: {text[-200:]!r}") from exc
    if not isinstance(data, dict):
        raise UnsafeImageError(f"{what} printed {type(data).__name__}, not a JSON object")
    return data


def _progress_reader(progress: ProgressCallback, dst: Path) -> Callable[[str], None]:
    """Turn qemu-img's ``(12.34/100%)`` progress output into events (percent of 100)."""
    pending = ""

    def read(chunk: str) -> None:  # unbuffered: sh hands over a character at a time
        nonlocal pending
        *lines, pending = re.split(r"[\r\n]", pending + chunk)
        for line in lines:
            if match := _PERCENT.search(line):
                done = int(float(match.group(1)))
                progress(ProgressEvent("export", f"writing {dst.name}", done=done, total=100))

    return read
