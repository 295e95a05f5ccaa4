"""Export: flatten an image's layer chain into one standalone file, or link a thin overlay.

What the destination is decides how it is written, before any work starts:

- a new path is created through a temp file beside it, renamed into place once complete (its
  directory must exist); an existing regular file is replaced the same way, only with ``force``;
- a symlink to a device or a pipe is followed; a symlink to a regular file (or to nothing) is
  itself replaced, only with ``force``: export never writes through a link into a file;
- a block device is written in place by qemu-img;
- a character device or a FIFO, ``-`` (stdout) and a path naming one of our open descriptors
  (``/dev/stdout``, ``/dev/fd/N``) are streamed into, since qemu-img cannot write to a pipe:
  the image is converted in the store's ``tmp/`` first; a terminal is refused;
- a directory, a socket and any path inside the store are refused.

``link`` makes a qcow2 overlay on the stored blob and records it as a root (:mod:`imagekit.oci.
roots`), so ``rm`` and ``gc`` keep its backing chain while the overlay exists.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from imagekit.core import atomic
from imagekit.disk import header, qemu_img
from imagekit.errors import ImagekitError, RecipeError, StoreError
from imagekit.oci import roots
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import DISK_FORMATS
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

EXPORT_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx")
STDOUT = "-"
_FD_LINK = re.compile(r"/(?:proc/(self|thread-self|\d+)|dev)/fd/(\d+)")  # /dev/fd/N: no pid
_CHUNK = 1 << 20


class ExportOptions(TypedDict, total=False):
    """How to export: ``disk_format``, ``compress``, ``sparse``, ``link``, ``force``."""

    disk_format: str
    compress: bool
    sparse: bool
    link: bool
    force: bool  # replace an existing regular file (or a symlink to one)


@dataclass(frozen=True)
class Settings:
    disk_format: str = "qcow2"
    compress: bool = False
    sparse: bool = True
    link: bool = False
    force: bool = False

    def check(self) -> None:
        if self.disk_format not in EXPORT_FORMATS:
            raise RecipeError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
        if self.compress and self.disk_format != "qcow2":
            raise RecipeError("--compress works with qcow2 only")
        if self.link and (self.disk_format != "qcow2" or self.compress):
            raise RecipeError(
                "--link makes a qcow2 overlay; it takes no other format or --compress"
            )


@dataclass(frozen=True)
class Source:
    """The stored image to export: its manifest, ref and disk layers (base first)."""

    layout: Layout
    manifest: str
    ref: str | None
    disks: tuple[Descriptor, ...]

    @property
    def top(self) -> Descriptor:
        if not self.disks:
            raise StoreError(f"image {self.manifest} has no disk layer; run imagekit fsck")
        return self.disks[-1]


@dataclass(frozen=True)
class Target:
    """Where the bytes go: ``file`` (renamed into ``path``), ``block`` or ``stream``."""

    named: str  # what the caller gave, for messages
    kind: str
    path: Path  # file: the path renamed into; block, stream: the path opened
    fd: int | None = None  # stream to an open descriptor (stdout)


def export_disk(
    source: Source,
    dest: Path | str,
    *,
    progress: ProgressCallback = ignore_progress,
    **options: Unpack[ExportOptions],
) -> Path:
    """Write ``source``'s chain to ``dest`` (see the module docstring for what ``dest`` may be)."""
    settings = Settings(**options)
    settings.check()
    target = destination(dest, source.layout.root, settings)
    if settings.link:
        _link(source, target)
    elif target.kind == "stream":
        _stream(source, target, settings, progress)
    else:
        with source.layout.shared_lock():  # gc waits: no layer vanishes under qemu-img
            _convert_into(source, target, settings, progress)
    return Path(dest)


def destination(dest: Path | str, store_root: Path, settings: Settings) -> Target:
    """Decide how to write ``dest``, refusing what export must not touch; RecipeError if so."""
    if str(dest) == STDOUT:
        return _descriptor(1, "stdout", store_root, settings)
    path = Path(dest)
    fd = _named_descriptor(path)
    if fd is not None:  # /dev/stdout, /dev/fd/N: the file we were handed, like "-"
        return _descriptor(fd, str(path), store_root, settings)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _file(path, store_root, settings, replacing=None)
    except OSError as e:
        raise RecipeError(f"cannot export to {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return _file(path, store_root, settings, replacing="a symlink to nothing")
        if stat.S_ISREG(st.st_mode):
            return _file(path, store_root, settings, replacing="a symlink to a file")
    if stat.S_ISREG(st.st_mode):
        return _file(path, store_root, settings, replacing="a file")
    if stat.S_ISDIR(st.st_mode):
        raise RecipeError(f"{path} is a directory; give a file name")
    _refuse_inside(Path(os.path.realpath(path)), store_root, str(path))
    if settings.link:
        raise RecipeError(f"--link writes a qcow2 overlay file; {path} is not a file")
    if stat.S_ISBLK(st.st_mode):
        return Target(str(path), "block", path)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return Target(str(path), "stream", path)
    raise RecipeError(f"{path} is not a file, block device, character device or pipe")


def _file(path: Path, store_root: Path, settings: Settings, *, replacing: str | None) -> Target:
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise RecipeError(f"cannot export to {path}: {parent} is not a directory")
        raise RecipeError(f"cannot export to {path}: directory {parent} does not exist; create it")
    final = Path(os.path.realpath(parent)) / path.name
    _refuse_inside(final, store_root, str(path))
    if replacing is not None and not settings.force:
        raise RecipeError(
            f"{path} exists ({replacing}); pass --force (force=True) to replace it"
            + ("; its target is left alone" if replacing.startswith("a symlink") else "")
        )
    return Target(str(path), "file", final)


def _named_descriptor(path: Path) -> int | None:
    """N when ``path`` is, or links to, one of our open descriptors (``/dev/fd/N``,
    ``/proc/self/fd/N``: what ``/dev/stdout`` is), so it is written as that descriptor rather
    than replaced, even when the descriptor is a redirected regular file."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a symlink chain
        match = _FD_LINK.fullmatch(current)
        if match and match[1] in (None, "self", "thread-self", str(os.getpid())):
            return int(match[2])
        try:
            target = os.readlink(current)
        except OSError:
            return None  # not a symlink (or gone): an ordinary path
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


def _descriptor(fd: int, named: str, store_root: Path, settings: Settings) -> Target:
    if settings.link:
        raise RecipeError(f"--link writes a qcow2 overlay file; give -o FILE, not {named}")
    try:
        st = os.fstat(fd)
    except OSError:
        raise RecipeError(f"cannot export to {named}: descriptor {fd} is not open") from None
    if os.isatty(fd):
        raise RecipeError(
            f"{named} is a terminal; redirect it to a file or a pipe, or give -o FILE"
        )
    if stat.S_ISREG(st.st_mode):
        _refuse_inside(Path(os.path.realpath(f"/proc/self/fd/{fd}")), store_root, named)
    elif stat.S_ISDIR(st.st_mode):
        raise RecipeError(f"{named} is a directory; give a file name")
    return Target(named, "stream", Path(f"/proc/self/fd/{fd}"), fd=fd)


def _refuse_inside(path: Path, store_root: Path, named: str) -> None:
    if path.is_relative_to(os.path.realpath(store_root)):
        raise RecipeError(
            f"refusing to export to {named}: it is inside the store {store_root}; "
            "give a path outside it"
        )


def _convert_into(
    source: Source, target: Target, settings: Settings, progress: ProgressCallback
) -> None:
    """qemu-img writes the file (through a temp beside it) or the block device itself."""
    blob = source.layout.blob_path(source.top.digest)
    if target.kind == "block":
        _check_device_size(blob, target, settings)
        _convert(source, target.path, settings, progress)
        return
    temp = _temp_beside(target)
    try:
        _convert(source, temp, settings, progress)
        atomic.commit(temp, target.path)
    finally:
        temp.unlink(missing_ok=True)


def _link(source: Source, target: Target) -> None:
    """The overlay and its root record, under the shared lock so no gc runs in between."""
    layout = source.layout
    with layout.shared_lock():
        top = source.top
        if not layout.has_blob(top.digest):
            raise StoreError(f"image {source.manifest} lost its disk {top.digest}; pull it again")
        previous = roots.get(layout, target.path)
        digests = tuple(d.digest for d in source.disks)
        root = roots.Root.new(target.path, "link", source.manifest, digests, source.ref)
        temp = _temp_beside(target)
        try:
            # The record first: a kill after it leaves a root gc drops, never an overlay that
            # nothing keeps alive.
            roots.add(layout, root)
            qemu_img.create_linked_overlay(temp, layout.blob_path(top.digest), _format(top))
            atomic.commit(temp, target.path)
        except BaseException:
            if previous is not None:
                roots.add(layout, previous)  # the old overlay is still there
            else:
                roots.remove(layout, target.path)
            raise
        finally:
            temp.unlink(missing_ok=True)


def _stream(source: Source, target: Target, settings: Settings, progress: ProgressCallback) -> None:
    """Convert into the store's tmp/ (gc removes it if we die), then copy into the target."""
    layout = source.layout
    temp = layout.new_temp(f".export.{settings.disk_format}")
    try:
        with layout.shared_lock():
            _convert(source, temp, settings, progress)
        fd = target.fd if target.fd is not None else _open_stream(target)
        try:
            _copy(temp, fd, target, progress)
        finally:
            if target.fd is None:
                os.close(fd)
    finally:
        temp.unlink(missing_ok=True)


def _convert(source: Source, dest: Path, settings: Settings, progress: ProgressCallback) -> None:
    top = source.top
    qemu_img.convert(
        source.layout.blob_path(top.digest),
        _format(top),
        dest,
        settings.disk_format,
        compress=settings.compress,
        sparse=settings.sparse,
        progress=progress,
    )


def _temp_beside(target: Target) -> Path:
    """Create the temp ourselves, so a directory we cannot write is one clear error."""
    temp = atomic.temp_beside(target.path)
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    except OSError as e:
        raise ImagekitError(f"cannot write in {target.path.parent}: {e.strerror}") from None
    return temp


def _open_stream(target: Target) -> int:
    """Open a device or FIFO for writing (a FIFO waits here for its reader); never create."""
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ImagekitError(f"cannot open {target.named} for writing: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)) or os.isatty(fd):
        os.close(fd)
        what = "a terminal" if stat.S_ISCHR(mode) else "no longer a device or pipe"
        raise RecipeError(f"refusing to export to {target.named}: it is {what}")
    return fd


def _copy(temp: Path, fd: int, target: Target, progress: ProgressCallback) -> None:
    total, done = temp.stat().st_size, 0
    with temp.open("rb") as src:
        while chunk := src.read(_CHUNK):
            view = memoryview(chunk)
            while view:
                try:
                    written = os.write(fd, view)
                except OSError as e:
                    raise _write_failed(e, target, done, total) from None
                view, done = view[written:], done + written
            progress(ProgressEvent("export", f"writing {target.named}", done=done, total=total))


def _write_failed(error: OSError, target: Target, done: int, total: int) -> ImagekitError:
    where = f"after {done} of {total} bytes; the export is incomplete"
    if atomic.disk_full(error):
        return ImagekitError(f"cannot write {target.named}: no space left on it {where}")
    if error.errno == errno.EPIPE:
        return ImagekitError(f"the reader of {target.named} closed it {where}")
    return ImagekitError(f"cannot write {target.named}: {error.strerror} {where}")


def _check_device_size(blob: Path, target: Target, settings: Settings) -> None:
    """Raw output must fit the device; qemu-img would fail with "Cannot grow device files"."""
    if settings.disk_format != "raw":
        return
    needed = header.probe(blob).virtual_size
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if needed is not None and size < needed:
        raise RecipeError(
            f"{target.named} holds {size} bytes but the image needs {needed}; "
            "use a bigger device, or --format qcow2"
        )


def _format(disk: Descriptor) -> str:
    return DISK_FORMATS[disk.media_type]
