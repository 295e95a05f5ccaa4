"""One blob down from a registry: streamed into ``tmp/``, hashed while written, resumed.

A download is ``tmp/oci-<hex>.part``: not tied to a process, so the next pull re-hashes what is
there and asks for the rest with Range. A blob's digest is its validator, so resuming cannot mix
objects; nothing enters ``blobs/`` before its size and digest are the descriptor's.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import mmap
import os
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from imagekit.core import atomic
from imagekit.core.digest import hexpart
from imagekit.core.writeback import WriteBack
from imagekit.errors import FetchError, StoreError, VerificationError
from imagekit.net.transport import Transient
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.registry import Registry
from imagekit.oci.wire import PIECE, fail
from imagekit.progress import Meter

if TYPE_CHECKING:
    import requests

_BUFFERS = 8  # pieces read ahead of the hashing thread: 8 MiB at most
_LARGE = 32 << 20  # a blob this large is written around the page cache (else written back)
_ALIGN = 4096  # what O_DIRECT asks of a write's offset, length and memory (4Kn disks included)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")
_R = TypeVar("_R")


class _Hasher:
    """sha256 on a thread of its own, so a blob is hashed while its next piece arrives.

    Pieces are read into a pool of at most ``_BUFFERS`` reused buffers of ``size`` bytes (no
    allocation, no copy per piece), made as the reader gets ahead; a buffer goes back to the
    pool once hashed, so memory stays bounded. hashlib lets go of the GIL on large buffers.
    The buffers are anonymous maps: page-aligned, as a write with O_DIRECT needs.
    """

    def __init__(self, size: int) -> None:
        self._sha = hashlib.sha256()
        self._size, self._made = size, 0
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[tuple[memoryview, mmap.mmap] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="imagekit-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            piece, buffer = item
            self._sha.update(piece)
            piece.release()
            self._free.put(buffer)

    def buffer(self) -> mmap.mmap:
        """A buffer to read the next piece into; waits while every one is still to be hashed."""
        if self._made < _BUFFERS:
            try:
                return self._free.get_nowait()
            except queue.Empty:
                self._made += 1
                return mmap.mmap(-1, self._size)
        return self._free.get()

    def give_back(self, buffer: mmap.mmap) -> None:
        """A buffer that holds nothing to hash (a read that ended or failed)."""
        self._free.put(buffer)

    def update(self, piece: memoryview, buffer: mmap.mmap) -> None:
        """Hash ``piece``, a view of ``buffer``, which returns to the pool once hashed."""
        self._queue.put((piece, buffer))

    def hexdigest(self) -> str:
        """The digest of every piece given; the hasher is finished afterwards."""
        self.stop()
        return self._sha.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


Reader = Callable[[memoryview], int]  # readinto: fills a buffer, returns the count (0: the end)


class Partial:
    """``tmp/oci-<hex>.part``: one blob's bytes so far, hashed exactly as they reached the file."""

    def __init__(self, path: Path, desc: Descriptor, mode: int = 0o600) -> None:
        self.path, self.desc = path, desc
        self.size = self.adopted = self.received = 0
        self._piece_size = min(PIECE, max(1, desc.size))  # a config needs no 1 MiB buffer
        self._hash = _Hasher(self._piece_size)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._fd = _guarded(path, lambda: os.open(path, flags, mode))
        self._direct = _open_direct(path) if desc.size > _LARGE else None
        self._writeback = WriteBack(self._fd)  # for what goes through the cache, hashed already
        self._adopt()

    def _adopt(self) -> None:
        """Take over what a killed pull left, unless it is longer than the blob can be."""
        while n := self._piece(functools.partial(_read_file, self._fd), append=False):
            self.size += n
        if self.size > self.desc.size:
            self.reset()
        self.adopted = self.size

    def reset(self) -> None:
        _guarded(self.path, lambda: os.ftruncate(self._fd, 0))
        self._hash.stop()
        self._hash = _Hasher(self._piece_size)
        self._writeback.stop()  # its mark was the old bytes'
        self._writeback = WriteBack(self._fd)
        self.size = self.adopted = 0

    def fill(self, read: Reader) -> int:
        """Read the next piece of the blob with ``read``, write and hash it; 0 at the end."""
        n = self._piece(read, append=True)
        self.size += n
        self.received += n
        if self._direct is None:  # a direct write is on disk already: no fdatasync for it
            self._writeback.written(self.size)
        return n

    def _piece(self, read: Reader, *, append: bool) -> int:
        """One piece read into a pooled buffer, appended to the file if ``append``, hashed."""
        hasher = self._hash  # a refused piece resets the Partial, and with it the hasher
        buffer = hasher.buffer()
        try:
            n = read(memoryview(buffer))
            if n and append:
                self.write(memoryview(buffer)[:n])
        except BaseException:
            hasher.give_back(buffer)
            raise
        if not n:
            hasher.give_back(buffer)
            return 0
        hasher.update(memoryview(buffer)[:n], buffer)
        return n

    def write(self, data: memoryview) -> None:
        """Append ``data`` to the file (the caller hashes it and counts it).

        A large blob's whole pieces go around the page cache (O_DIRECT): the store keeps it on
        disk anyway, and caching it would take as many fresh pages as the blob is large. The
        tail, or all of it where the filesystem refuses O_DIRECT, goes through the cache and is
        written back as it comes (``core/writeback.py``).
        """
        if self.size + len(data) > self.desc.size:
            self.discard()
            raise VerificationError(
                f"blob {self.desc.digest} is longer than the {self.desc.size} bytes its manifest "
                "says; the registry serves other bytes, nothing was stored"
            )
        offset = self.size
        while data:
            if self._direct is not None and offset % _ALIGN == 0 and len(data) % _ALIGN == 0:
                try:
                    n = os.pwrite(self._direct, data, offset)
                except OSError:  # refused (alignment, filesystem) or failing: the cache says why
                    os.close(self._direct)
                    self._direct = None
                    continue
            else:
                n = _guarded(self.path, functools.partial(os.pwrite, self._fd, data, offset))
            data, offset = data[n:], offset + n

    def finish(self) -> None:
        """Refuse the bytes unless their size and digest are the descriptor's; then fsync."""
        actual = "sha256:" + self._hash.hexdigest()
        if self.size != self.desc.size or actual != self.desc.digest:
            self.discard()
            raise VerificationError(
                f"blob {self.desc.digest} from the registry is {self.size} bytes hashing to "
                f"{actual}, not the {self.desc.size} bytes the manifest names: it is corrupt "
                "on the registry (or was changed); nothing was stored"
            )
        _guarded(self.path, lambda: os.fsync(self._fd))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.reset()

    def close(self) -> None:
        self._hash.stop()
        self._writeback.stop()
        if self._direct is not None:
            os.close(self._direct)
        os.close(self._fd)


def _open_direct(path: Path) -> int | None:
    """A second descriptor of ``path`` that writes around the page cache, if its filesystem can."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return None


def _read_file(fd: int, buffer: memoryview) -> int:
    return os.readv(fd, [buffer])


def download(
    layout: Layout, registry: Registry, repository: str, desc: Descriptor, meter: Meter
) -> Partial | None:
    """Fetch ``desc`` into a verified ``tmp/`` file (None if the store has it meanwhile)."""
    name = hexpart(desc.digest)
    with layout.digest_lock(f"oci-{name}"):
        if layout.has_blob(desc.digest):
            return None
        part = Partial(layout.tmp_dir / f"oci-{name}.part", desc, layout.access.file_mode)
        try:
            if part.size < desc.size:
                url = registry.url(repository, "blobs", desc.digest)
                registry.transport.retrying(
                    url,
                    lambda: _get_rest(registry, repository, part, meter),
                    lambda: part.size,
                    part.path,
                )
            part.finish()
        finally:
            part.close()
    meter.update(desc.size, final=True)
    return part


def _get_rest(registry: Registry, repository: str, part: Partial, meter: Meter) -> None:
    desc = part.desc
    with registry.open_blob(repository, desc.digest, part.size) as resp:
        status = resp.status_code
        if status == 404:
            raise FetchError(
                f"blob {desc.digest} is missing from {registry.host}/{repository}: push the "
                "image there again"
            )
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if match is None or int(match[1]) != part.size:
                part.reset()
                raise Transient("the registry answered another range than asked for")
        elif status == 200:
            part.reset()  # the whole blob: fresh, or the registry ignored Range
        elif status == 416:
            part.reset()
            raise Transient("the registry cannot resume this blob; fetching it again")
        else:
            fail(resp, f"cannot fetch blob {desc.digest} from {registry.host}")
        read = _reader(resp)
        while part.fill(read):
            meter.update(part.size)
    if part.size < desc.size:
        raise Transient(f"connection closed after {part.size} of {desc.size} bytes")


def _reader(resp: requests.Response) -> Reader:
    """The body's readinto: http.client's own under urllib3 (into our buffer, no copy, no
    allocation per piece), else urllib3's. We asked for identity: nothing is to decode."""
    raw = resp.raw
    body = getattr(raw, "_fp", None)
    return body.readinto if isinstance(body, http.client.HTTPResponse) else raw.readinto


def commit(layout: Layout, part: Partial, desc: Descriptor) -> None:
    """Move a verified download into ``blobs/``; a racing pull of the same blob may have won."""
    with layout.digest_lock(f"oci-{hexpart(desc.digest)}"):
        if layout.has_blob(desc.digest):
            part.path.unlink(missing_ok=True)
            return
        if not part.path.is_file():
            raise StoreError(f"the download of {desc.digest} vanished before commit; pull again")
        layout.commit_file(part.path, desc.digest, desc.media_type)


def _guarded(path: Path, op: Callable[[], _R]) -> _R:
    """A local file operation whose failure says what to do (disk full above all)."""
    try:
        return op()
    except OSError as exc:
        if atomic.disk_full(exc):
            raise FetchError(
                f"disk full while writing {path}: free space in {path.parent} and run again; "
                "the partial download is kept and will resume"
            ) from exc
        raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from exc
