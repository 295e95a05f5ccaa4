"""What both download paths share: the resume sidecar, write errors, progress, size checks.

A download lands in ``tmp_dir/<name>.part`` beside ``<name>.part.json``, the sidecar naming the
URL and its validators (and, for a segmented download, which segments are complete). The
one-connection path (:mod:`imagekit.net.download`) and the segmented one
(:mod:`imagekit.net.segments`) read and write the same files through these helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from imagekit.core.atomic import disk_full, replace_file
from imagekit.core.writeback import WriteBack
from imagekit.errors import FetchError
from imagekit.progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    import requests

_PROGRESS_INTERVAL = 0.1


@dataclass(frozen=True)
class FetchResult:
    """A finished download: where it is and what it hashes to, so nobody has to read it again."""

    path: Path  # the complete file, still in tmp_dir: the caller moves it into the store
    size: int
    digests: dict[str, str]  # algorithm -> lowercase hex
    url: str  # where the bytes came from, after redirects
    etag: str | None
    last_modified: str | None
    resumed_from: int  # bytes kept from an earlier run's partial download (0 if fresh)
    transferred: int  # bytes received over the network in this call (copied, for file://)


def sidecar_of(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's fields, or nothing if it is missing or unreadable (then we start over)."""
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def text_field(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn local write failures into errors that say what to do (disk full above all)."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc):
            raise FetchError(
                f"disk full while writing {path}: free space in {path.parent} and run again; "
                "the partial download is kept and will resume"
            ) from exc
        raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from exc


class Meter:
    """Progress events at most ~10 a second: one per chunk would make UIs the bottleneck."""

    def __init__(self, callback: ProgressCallback, label: str) -> None:
        self.callback = callback
        self.label = label
        self._last = -_PROGRESS_INTERVAL

    def update(self, done: int, total: int | None, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= _PROGRESS_INTERVAL:
            self._last = now
            self.callback(ProgressEvent("fetch", self.label, done, total))


def size_mismatch(url: str, size: int, expected: int, qualifier: str = "") -> NoReturn:
    raise FetchError(
        f"{url} is {qualifier}{size} bytes but {expected} were expected; the download was "
        "deleted — check the recipe (size) or the mirror"
    )


@dataclass(frozen=True)
class SegmentRecord:
    """What a segmented sidecar says: the file it describes and the complete segments."""

    etag: str | None
    last_modified: str | None
    total: int
    size: int
    done: frozenset[int]

    def validator(self) -> str | None:
        return validator(self.etag, self.last_modified)


def validator(etag: str | None, last_modified: str | None) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags don't count)."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified


def plain_partial(part: Path, url: str) -> bool:
    """Whether a one-connection partial of ``url`` is there: resuming it beats starting over."""
    meta = read_sidecar(sidecar_of(part))
    try:
        return meta.get("url") == url and "segments" not in meta and part.stat().st_size > 0
    except OSError:
        return False


def segmented_partial(part: Path, url: str) -> bool:
    """Whether an earlier segmented download of ``url`` left segments to resume."""
    return recorded_segments(read_sidecar(sidecar_of(part)), url) is not None


def discard(part: Path) -> None:
    with writing(part):
        sidecar_of(part).unlink(missing_ok=True)
        part.unlink(missing_ok=True)


def recorded_segments(meta: dict[str, Any], url: str) -> SegmentRecord | None:
    """A segmented sidecar of ``url``, checked field by field (anything else: None)."""
    seg = meta.get("segments")
    if meta.get("url") != url or not isinstance(seg, dict):
        return None
    total, size, done = seg.get("total"), seg.get("size"), seg.get("done")
    if not (isinstance(total, int) and isinstance(size, int) and isinstance(done, list)):
        return None
    count = -(-total // size) if size > 0 else -1
    if total < 0 or count < 0 or not all(isinstance(i, int) and 0 <= i < count for i in done):
        return None
    etag, modified = meta.get("etag"), meta.get("last_modified")
    return SegmentRecord(
        etag if isinstance(etag, str) else None,
        modified if isinstance(modified, str) else None,
        total,
        size,
        frozenset(done),
    )


def record_segments(sidecar: Path, url: str, record: SegmentRecord) -> None:
    """Write the sidecar ``recorded_segments`` reads back: ``url``, validators, segments."""
    meta = {
        "url": url,
        "etag": record.etag,
        "last_modified": record.last_modified,
        "segments": {"total": record.total, "size": record.size, "done": sorted(record.done)},
    }
    with writing(sidecar):
        replace_file(sidecar, json.dumps(meta).encode())


class Partial:
    """``<name>.part``, its sidecar, and the running digests of exactly the bytes on disk."""

    def __init__(self, path: Path, url: str, algorithms: Sequence[str]) -> None:
        self.path = path
        self.sidecar = sidecar_of(path)
        self.url = url
        self.algorithms = algorithms
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.size = 0
        self.adopted = 0
        self._hashers = [hashlib.new(a) for a in algorithms]

    def adopt(self, chunk_size: int) -> None:
        """Take over an earlier run's bytes if its sidecar says they came from this URL.

        Not a segmented download's: its file has holes where segments are missing.
        """
        meta = read_sidecar(self.sidecar)
        if meta.get("url") != self.url or "segments" in meta:
            return
        hashers = [hashlib.new(a) for a in self.algorithms]
        size = 0
        try:
            with open(self.path, "rb") as f:
                while chunk := f.read(chunk_size):
                    for h in hashers:
                        h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise FetchError(
                f"cannot read the partial download {self.path}: {exc.strerror}; delete it "
                "to start over"
            ) from exc
        self._hashers, self.size, self.adopted = hashers, size, size
        self.etag, self.last_modified = text_field(meta, "etag"), text_field(meta, "last_modified")

    def validator(self) -> str | None:
        """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags don't count)."""
        return validator(self.etag, self.last_modified)

    def same_object(self, resp: requests.Response) -> bool:
        """False when the server names a different ETag: some servers ignore If-Range."""
        etag = resp.headers.get("ETag")
        return etag is None or self.etag is None or etag == self.etag

    def restart(self, etag: str | None, last_modified: str | None) -> None:
        """Start over empty, describing the new response in the sidecar.

        Truncate before writing the sidecar: a crash in between must never pair old bytes
        with new validators.
        """
        with writing(self.path):
            self.path.open("wb").close()
        self._hashers = [hashlib.new(a) for a in self.algorithms]
        self.size = self.adopted = 0
        self.etag, self.last_modified = etag, last_modified
        meta = {"url": self.url, "etag": etag, "last_modified": last_modified}
        with writing(self.sidecar):
            replace_file(self.sidecar, json.dumps(meta).encode())

    def discard(self) -> None:
        """Delete the partial and its sidecar: its bytes are wrong or of another object."""
        with writing(self.path):
            self.path.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
        self._hashers = [hashlib.new(a) for a in self.algorithms]
        self.size = self.adopted = 0
        self.etag = self.last_modified = None

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[bytes], None]]:
        """Yield a writer appending at ``size``; digests follow exactly what reached the file."""
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with writing(self.path):
                os.ftruncate(fd, self.size)  # drop any tail the digests do not cover
                os.lseek(fd, self.size, os.SEEK_SET)
            with WriteBack(fd) as writeback:

                def write(data: bytes) -> None:
                    self._write(fd, data)
                    writeback.written(self.size)

                yield write
        finally:
            os.close(fd)

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with writing(self.path):
                try:
                    n = os.write(fd, view)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.fsync(fd)  # keep what did get written: the next run resumes from it
                    raise
            for h in self._hashers:
                h.update(view[:n])
            self.size += n
            view = view[n:]

    def sync(self) -> None:
        """Make the complete file durable before the caller moves it into the store."""
        with writing(self.path):
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in zip(self.algorithms, self._hashers, strict=True)}
