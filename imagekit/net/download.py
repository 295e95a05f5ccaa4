"""Resumable, retried HTTP(S) and file:// downloads, hashed while they are written.

Disk images are large and mirrors are flaky, so a download survives dropped connections,
server errors and a killed process: bytes land in ``tmp_dir/<name>.part`` next to a JSON
sidecar naming the URL and its validators, and the next attempt (in this call or a later run)
asks only for the rest with ``Range``/``If-Range``. Every requested digest is computed while
writing, so a multi-gigabyte file is never read back.

A per-name lock only keeps two writers off one partial file. Callers that must not download
the same thing twice (pull) take their own per-digest lock and check the store first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import unquote, urlsplit

from imagekit.core.atomic import disk_full, replace_file
from imagekit.core.capped import open_regular
from imagekit.core.locking import FileLock
from imagekit.errors import FetchError
from imagekit.net.transport import (
    Transient,
    Transport,
    content_length,
    local_path,
    raise_for_status,
    scheme,
)
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

if TYPE_CHECKING:
    import requests

_PROGRESS_INTERVAL = 0.1
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_ALGORITHMS = hashlib.algorithms_guaranteed - {"shake_128", "shake_256"}


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


class Downloader:
    """Downloads into ``tmp_dir``; one instance serves many downloads and reuses connections."""

    def __init__(
        self,
        tmp_dir: Path,
        *,
        transport: Transport | None = None,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.tmp_dir = tmp_dir
        self.transport = transport or Transport()
        self.chunk_size = chunk_size

    def download(
        self,
        url: str,
        *,
        name: str,
        algorithms: Sequence[str] = ("sha256",),
        expected_size: int | None = None,
        progress: ProgressCallback = ignore_progress,
    ) -> FetchResult:
        """Fetch ``url`` to ``tmp_dir/<name>.part``, resuming what an earlier run left there.

        ``tmp_dir/<name>.lock`` is held throughout: a second caller for the same name waits,
        then finds the bytes already there and only confirms them with the server.
        """
        if not _SAFE_NAME.fullmatch(name):
            raise FetchError(f"invalid download name {name!r}: use letters, digits, '.', '_', '-'")
        algs = _algorithms(algorithms)
        url_scheme = scheme(url)
        with _writing(self.tmp_dir):
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        partial = _Partial(self.tmp_dir / f"{name}.part", url, algs)
        job = _Job(url, partial, expected_size, _Meter(progress, _label(url)))
        with FileLock(self.tmp_dir / f"{name}.lock"):
            if url_scheme == "file":
                self._copy(job)
            else:
                partial.adopt(self.chunk_size)
                self.transport.retrying(
                    url, lambda: self._attempt(job), lambda: partial.size, partial.path
                )
            if expected_size is not None and partial.size != expected_size:
                size = partial.size  # discard() zeroes it; the message must say what was got
                partial.discard()
                _size_mismatch(url, size, expected_size)
            partial.sync()
        job.meter.update(partial.size, partial.size, final=True)
        return FetchResult(
            path=partial.path,
            size=partial.size,
            digests=partial.hexdigests(),
            url=job.final_url,
            etag=partial.etag,
            last_modified=partial.last_modified,
            resumed_from=partial.adopted,
            transferred=job.transferred,
        )

    def _attempt(self, job: _Job) -> None:
        """One request: resume, restart or finish the partial file from whatever the server says."""
        partial = job.partial
        headers = {}
        if partial.size:
            headers["Range"] = f"bytes={partial.size}-"
            validator = partial.validator()
            if validator:
                headers["If-Range"] = validator
        with self.transport.get(job.url, headers) as resp:
            job.final_url = resp.url
            status = resp.status_code
            if partial.size and status == 416:
                if _unsatisfied_total(resp) == partial.size and partial.same_object(resp):
                    return  # an earlier run got every byte
                partial.discard()
                raise Transient("the partial download does not fit the server's file")
            if partial.size and status == 206:
                content_range = _content_range(resp)
                if content_range is None or content_range[0] != partial.size:
                    partial.discard()
                    raise Transient("the server answered a different range than requested")
                if not partial.same_object(resp):
                    partial.discard()
                    raise Transient("the file changed on the server while resuming")
                total = content_range[1]
            elif status == 200:  # fresh, or the server ignored Range / the object changed
                partial.restart(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
                total = content_length(resp)
            else:
                raise_for_status(resp, job.url)
            if job.expected_size is not None and total not in (None, job.expected_size):
                partial.discard()
                _size_mismatch(job.url, total, job.expected_size)
            # A body without a length that ends early is a cut connection, not the whole file,
            # when the signed size is known: resume it rather than delete it as a size mismatch.
            self._stream(resp, job, job.expected_size if total is None else total)

    def _stream(self, resp: requests.Response, job: _Job, total: int | None) -> None:
        """Append the body; decode_content=False so compressed files stay as published."""
        partial = job.partial
        with partial.appending() as write:
            for chunk in resp.raw.stream(self.chunk_size, decode_content=False):
                job.transferred += len(chunk)
                if job.expected_size is not None and partial.size + len(chunk) > job.expected_size:
                    partial.discard()
                    _size_mismatch(
                        job.url, partial.size + len(chunk), job.expected_size, "at least "
                    )
                write(chunk)
                job.meter.update(partial.size, total)
        if total is not None and partial.size < total:
            raise Transient(f"connection closed after {partial.size} of {total} bytes")

    # file:// ---------------------------------------------------------------------------------

    def _copy(self, job: _Job) -> None:
        """Copy a local file through the same hashing writer; no resume: local reads don't drop.

        Only a regular file: a device (/dev/zero) would be copied until the disk is full.
        """
        source = local_path(job.url)
        partial = job.partial
        try:
            with open_regular(source, "local file", error=FetchError) as src:
                total = os.fstat(src.fileno()).st_size
                if job.expected_size is not None and total != job.expected_size:
                    _size_mismatch(job.url, total, job.expected_size)
                partial.restart(None, None)
                with partial.appending() as write:
                    while chunk := src.read(self.chunk_size):
                        write(chunk)
                        job.meter.update(partial.size, total)
        except OSError as exc:  # write failures arrive as FetchError already
            raise FetchError(f"cannot read {source}: {exc.strerror}") from exc
        job.transferred = partial.size


@dataclass
class _Job:
    """The state one ``download`` call carries across its attempts."""

    url: str
    partial: _Partial
    expected_size: int | None
    meter: _Meter
    transferred: int = 0
    final_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.final_url = self.url


class _Partial:
    """``<name>.part``, its sidecar, and the running digests of exactly the bytes on disk."""

    def __init__(self, path: Path, url: str, algorithms: Sequence[str]) -> None:
        self.path = path
        self.sidecar = path.with_name(path.name + ".json")
        self.url = url
        self.algorithms = algorithms
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.size = 0
        self.adopted = 0
        self._hashers = [hashlib.new(a) for a in algorithms]

    def adopt(self, chunk_size: int) -> None:
        """Take over an earlier run's bytes if its sidecar says they came from this URL."""
        meta = _read_sidecar(self.sidecar)
        if meta.get("url") != self.url:
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
        self.etag, self.last_modified = meta.get("etag"), meta.get("last_modified")

    def validator(self) -> str | None:
        """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags don't count)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def same_object(self, resp: requests.Response) -> bool:
        """False when the server names a different ETag: some servers ignore If-Range."""
        etag = resp.headers.get("ETag")
        return etag is None or self.etag is None or etag == self.etag

    def restart(self, etag: str | None, last_modified: str | None) -> None:
        """Start over empty, describing the new response in the sidecar.

        Truncate before writing the sidecar: a crash in between must never pair old bytes
        with new validators.
        """
        with _writing(self.path):
            self.path.open("wb").close()
        self._hashers = [hashlib.new(a) for a in self.algorithms]
        self.size = self.adopted = 0
        self.etag, self.last_modified = etag, last_modified
        meta = {"url": self.url, "etag": etag, "last_modified": last_modified}
        with _writing(self.sidecar):
            replace_file(self.sidecar, json.dumps(meta).encode())

    def discard(self) -> None:
        """Delete the partial and its sidecar: its bytes are wrong or of another object."""
        with _writing(self.path):
            self.path.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
        self._hashers = [hashlib.new(a) for a in self.algorithms]
        self.size = self.adopted = 0
        self.etag = self.last_modified = None

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[bytes], None]]:
        """Yield a writer appending at ``size``; digests follow exactly what reached the file."""
        with _writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with _writing(self.path):
                os.ftruncate(fd, self.size)  # drop any tail the digests do not cover
                os.lseek(fd, self.size, os.SEEK_SET)
            yield lambda data: self._write(fd, data)
        finally:
            os.close(fd)

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with _writing(self.path):
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
        with _writing(self.path):
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in zip(self.algorithms, self._hashers, strict=True)}


class _Meter:
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


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
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


def _read_sidecar(path: Path) -> dict[str, str | None]:
    """The sidecar's fields, or nothing if it is missing or unreadable (then we start over)."""
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}


def _algorithms(requested: Sequence[str]) -> list[str]:
    algs = list(dict.fromkeys(["sha256", *(a.lower() for a in requested)]))
    unknown = [a for a in algs if a not in _ALGORITHMS]
    if unknown:
        raise FetchError(f"unsupported digest algorithm {unknown[0]!r}: use sha256 or sha512")
    return algs


def _label(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name or url


def _content_range(resp: requests.Response) -> tuple[int, int | None] | None:
    """(start, total) of a 206; total is None when the server does not know it."""
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if match is None:
        return None
    start, _end, total = match.groups()
    return int(start), None if total == "*" else int(total)


def _unsatisfied_total(resp: requests.Response) -> int | None:
    match = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _size_mismatch(url: str, size: int, expected: int, qualifier: str = "") -> NoReturn:
    raise FetchError(
        f"{url} is {qualifier}{size} bytes but {expected} were expected; the download was "
        "deleted — check the recipe (size) or the mirror"
    )
