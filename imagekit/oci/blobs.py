"""One blob over the wire: a chunked upload that resumes, a hashed download that resumes.

An upload's URL is kept in ``tmp/push-<id>.part.json`` after every chunk, so a push killed
between chunks asks the registry how much it holds and sends only the rest; a registry that
forgot the upload (or holds a torn chunk) gets the blob again from the start. A download is
``tmp/oci-<hex>.part``: not tied to a process, so the next pull re-hashes what is there and asks
for the rest with Range. A blob's digest is its validator, so resuming cannot mix objects.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from imagekit.core import atomic
from imagekit.core.digest import hexpart, identity
from imagekit.errors import FetchError, StoreError, VerificationError
from imagekit.net.transport import Transient
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.registry import PIECE, FileChunk, RangeMismatch, Registry, fail
from imagekit.progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    import requests

_PROGRESS_INTERVAL = 0.1
_HINTS_MAX = 20000
_BUFFERS = 8  # pieces read ahead of the hashing thread: 8 MiB at most
_FLUSH_EVERY = 32 << 20  # bytes of a download between write-backs started while it arrives
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")
_R = TypeVar("_R")


class Meter:
    """Byte progress of one blob, at most ~10 events a second (UIs must not be the bottleneck)."""

    def __init__(self, callback: ProgressCallback, stage: str, label: str, total: int) -> None:
        self.callback, self.stage, self.label, self.total = callback, stage, label, total
        self._last = -_PROGRESS_INTERVAL

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= _PROGRESS_INTERVAL:
            self._last = now
            self.callback(ProgressEvent(self.stage, self.label, done, self.total))


class MountHints:
    """Which repository of a registry last held each blob, so a push can mount instead of send.

    A hint is only a hint: a wrong one costs one refused mount and the blob is uploaded.
    """

    def __init__(self, layout: Layout, host: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)
        self.layout = layout
        self.path = layout.cache_dir / "registry" / f"{safe}.json"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def get(self, digest: str) -> str | None:
        return self._load().get(digest)

    def remember(self, digests: Iterable[str], repository: str) -> None:
        data = self._load()
        for digest in digests:
            data.pop(digest, None)
            data[digest] = repository
        kept = dict(list(data.items())[-_HINTS_MAX:])
        with contextlib.suppress(OSError):  # a lost hint costs an upload, never correctness
            self.layout.access.make_dir(self.path.parent)
            mode = self.layout.access.file_mode
            atomic.replace_file(self.path, json.dumps(kept).encode(), mode=mode)


# --- upload ----------------------------------------------------------------------------------


def push_blob(
    layout: Layout,
    registry: Registry,
    repository: str,
    desc: Descriptor,
    hint: str | None,
    chunk_size: int,
    meter: Meter,
) -> tuple[str, int]:
    """Make ``repository`` hold ``desc``: ("skipped" | "mounted" | "uploaded", bytes sent).

    A lock per registry, repository and blob keeps two pushes off one upload session.
    """
    upload = _Upload(layout, registry, repository, desc, chunk_size, meter)
    with layout.digest_lock(upload.sidecar.name.removesuffix(".part.json")):
        if registry.blob_size(repository, desc.digest) is not None:
            upload.forget()  # a killed push may have finished it before forgetting the upload
            return "skipped", 0
        location = None
        if hint is not None and hint != repository:
            location = registry.mount(repository, desc.digest, hint)
            if location is None:
                upload.forget()
                return "mounted", 0
        return "uploaded", upload.run(location)


class _Upload:
    """A chunked upload (POST, PATCH..., PUT ?digest=) that picks up where a killed one stopped."""

    def __init__(
        self,
        layout: Layout,
        registry: Registry,
        repository: str,
        desc: Descriptor,
        chunk_size: int,
        meter: Meter,
    ) -> None:
        self.registry, self.repository, self.desc = registry, repository, desc
        self.path = layout.blob_path(desc.digest)
        self.chunk_size, self.meter = max(1, chunk_size), meter
        key = hexpart(identity([registry.host, repository, desc.digest]))[:32]
        self.sidecar = layout.tmp_dir / f"push-{key}.part.json"
        self.mode = layout.access.file_mode
        self.location: str | None = None
        self.offset = self.sent = self.restarts = 0
        self.unsure = False  # the registry may hold more or less than ``offset``: ask first

    def run(self, location: str | None) -> int:
        """Upload the blob; returns the bytes sent (less than its size after a resume)."""
        saved = self._saved()
        self.location, self.unsure = (saved, True) if saved else (location, False)
        url = self.registry.url(self.repository, "blobs", "uploads/")
        with self.path.open("rb") as f:
            self.registry.transport.retrying(url, lambda: self._attempt(f), lambda: self.offset)
        self.forget()
        return self.sent

    def forget(self) -> None:
        """The registry holds the blob: no upload of it is left to resume."""
        self.sidecar.unlink(missing_ok=True)
        self.meter.update(self.desc.size, final=True)

    def _attempt(self, f: IO[bytes]) -> None:
        location = self._sync()
        self.unsure = True  # until this attempt ends well, a retry must ask the registry first
        while self.offset < self.desc.size:
            length = min(self.chunk_size, self.desc.size - self.offset)
            chunk = FileChunk(f, self.offset, length)
            try:
                location = self.registry.patch(self.repository, location, chunk, sent=self._sent)
            except RangeMismatch:
                raise Transient("the registry holds a different part of the upload") from None
            self.location = location
            self.offset += length
            self._save()
        try:
            self.registry.finish_upload(self.repository, location, self.desc.digest)
        except RangeMismatch:
            self._restart()
        self.unsure = False

    def _sync(self) -> str:
        """The upload to continue, at the offset the registry holds; a new one if it has none."""
        if self.location is not None and self.unsure:
            held = self.registry.upload_offset(self.repository, self.location)
            if held is None or held > self.desc.size:
                self.location = None
            else:
                self.offset = held
        if self.location is None:
            self.location = self.registry.start_upload(self.repository)
            self.offset = 0
            self._save()
        return self.location

    def _restart(self) -> None:
        """The registry's copy does not hash right (a torn chunk): send the blob once more."""
        self.restarts += 1
        if self.restarts > 1:
            raise FetchError(
                f"{self.registry.host} did not accept {self.desc.digest} after two full "
                "uploads: check the registry's storage and logs"
            )
        self.location = None
        self.sidecar.unlink(missing_ok=True)
        raise Transient("the registry's copy of the upload did not match; starting it again")

    def _sent(self, n: int) -> None:
        self.sent += n
        self.meter.update(min(self.offset + n, self.desc.size))

    def _saved(self) -> str | None:
        try:
            data = json.loads(self.sidecar.read_bytes())
        except (OSError, ValueError):
            return None
        location = data.get("location") if isinstance(data, dict) else None
        return location if isinstance(location, str) and location else None

    def _save(self) -> None:
        data = json.dumps({"location": self.location, "digest": self.desc.digest}).encode()
        try:
            atomic.replace_file(self.sidecar, data, mode=self.mode)
        except OSError as exc:
            raise FetchError(f"cannot write {self.sidecar}: {exc.strerror or exc}") from None


# --- download --------------------------------------------------------------------------------


class _Hasher:
    """sha256 on a thread of its own, so a blob is hashed while its next piece arrives.

    Pieces are read into a pool of at most ``_BUFFERS`` reused buffers of ``size`` bytes (no
    allocation, no copy per piece), made as the reader gets ahead; a buffer goes back to the
    pool once hashed, so memory stays bounded. hashlib lets go of the GIL on large buffers.
    """

    def __init__(self, size: int) -> None:
        self._sha = hashlib.sha256()
        self._size, self._made = size, 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[tuple[memoryview, bytearray] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="imagekit-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            piece, buffer = item
            self._sha.update(piece)
            piece.release()
            self._free.put(buffer)

    def buffer(self) -> bytearray:
        """A buffer to read the next piece into; waits while every one is still to be hashed."""
        if self._made < _BUFFERS:
            try:
                return self._free.get_nowait()
            except queue.Empty:
                self._made += 1
                return bytearray(self._size)
        return self._free.get()

    def give_back(self, buffer: bytearray) -> None:
        """A buffer that holds nothing to hash (a read that ended or failed)."""
        self._free.put(buffer)

    def update(self, piece: memoryview, buffer: bytearray) -> None:
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


class _Flusher:
    """fdatasync on a thread of its own each time ``_FLUSH_EVERY`` more bytes were written.

    The disk then writes a large blob while it arrives, and the fsync that makes it durable
    before commit waits for the tail alone. An error here is left for that fsync to report.
    """

    def __init__(self, fd: int) -> None:
        self._fd, self._pending, self._done = fd, 0, False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagekit-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done:
                return
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)

    def wrote(self, n: int) -> None:
        self._pending += n
        if self._pending >= _FLUSH_EVERY:
            self._pending = 0
            self._wake.set()

    def stop(self) -> None:
        """Wait for a write-back under way: the file descriptor may be closed afterwards."""
        self._done = True
        self._wake.set()
        self._thread.join()


Reader = Callable[[bytearray], int]  # readinto: fills a buffer, returns the count (0: the end)


class Partial:
    """``tmp/oci-<hex>.part``: one blob's bytes so far, hashed exactly as they reached the file."""

    def __init__(self, path: Path, desc: Descriptor, mode: int = 0o600) -> None:
        self.path, self.desc = path, desc
        self.size = self.adopted = self.received = 0
        self._piece_size = min(PIECE, max(1, desc.size))  # a config needs no 1 MiB buffer
        self._hash = _Hasher(self._piece_size)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._fd = _guarded(path, lambda: os.open(path, flags, mode))
        self._flusher = _Flusher(self._fd) if desc.size > _FLUSH_EVERY else None
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
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hash.stop()
        self._hash = _Hasher(self._piece_size)
        self.size = self.adopted = 0

    def fill(self, read: Reader) -> int:
        """Read the next piece of the blob with ``read``, write and hash it; 0 at the end."""
        n = self._piece(read, append=True)
        self.size += n
        self.received += n
        if self._flusher is not None:
            self._flusher.wrote(n)
        return n

    def _piece(self, read: Reader, *, append: bool) -> int:
        """One piece read into a pooled buffer, appended to the file if ``append``, hashed."""
        hasher = self._hash  # a refused piece resets the Partial, and with it the hasher
        buffer = hasher.buffer()
        try:
            n = read(buffer)
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
        """Append ``data`` to the file (the caller hashes it and counts it)."""
        if self.size + len(data) > self.desc.size:
            self.discard()
            raise VerificationError(
                f"blob {self.desc.digest} is longer than the {self.desc.size} bytes its manifest "
                "says; the registry serves other bytes, nothing was stored"
            )
        while data:
            n = _guarded(self.path, functools.partial(os.write, self._fd, data))
            data = data[n:]

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
        if self._flusher is not None:
            self._flusher.stop()
        os.close(self._fd)


def _read_file(fd: int, buffer: bytearray) -> int:
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
