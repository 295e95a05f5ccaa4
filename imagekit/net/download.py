"""Resumable, retried HTTP(S) and file:// downloads, hashed while they are written.

Disk images are large and mirrors are flaky, so a download survives dropped connections,
server errors and a killed process: bytes land in ``tmp_dir/<name>.part`` next to a JSON
sidecar naming the URL and its validators, and the next attempt (in this call or a later run)
asks only for the rest with ``Range``/``If-Range``. Every requested digest is computed while
writing, so a multi-gigabyte file is never read back. A large file from a server that honours
``Range`` is fetched over several connections, from the URL and any mirrors of it
(:mod:`imagekit.net.segments`); this module is the one-connection path and the fallback.

A per-name lock only keeps two writers off one partial file. Callers that must not download
the same thing twice (pull) take their own per-digest lock and check the store first.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from imagekit.config import MAX_CONNECTIONS
from imagekit.core.capped import open_regular
from imagekit.core.locking import FileLock
from imagekit.errors import FetchError
from imagekit.net import segments
from imagekit.net.partfile import (
    FetchResult,
    Meter,
    Partial,
    plain_partial,
    segmented_partial,
    size_mismatch,
    writing,
)
from imagekit.net.transport import (
    Transient,
    Transport,
    content_length,
    content_range,
    local_path,
    raise_for_status,
    scheme,
)
from imagekit.progress import ProgressCallback, ignore_progress

if TYPE_CHECKING:
    import requests

__all__ = ["Downloader", "FetchResult"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_ALGORITHMS = hashlib.algorithms_guaranteed - {"shake_128", "shake_256"}


class Downloader:
    """Downloads into ``tmp_dir``; one instance serves many downloads and reuses connections.

    ``connections`` is how many Range requests a download larger than one ``segment_size``
    may have in flight; the
    default, 1, is one stream (pulls pass the configured ``connections``, default 4).
    """

    def __init__(
        self,
        tmp_dir: Path,
        *,
        transport: Transport | None = None,
        chunk_size: int = 1 << 20,
        connections: int = 1,
        segment_size: int | None = None,
    ) -> None:
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise FetchError(f"connections must be 1 to {MAX_CONNECTIONS}, not {connections}")
        self.tmp_dir = tmp_dir
        self.transport = transport or Transport()
        self.chunk_size = chunk_size
        self.connections = connections
        self.segment_size = segment_size or segments.SEGMENT_SIZE

    def download(
        self,
        url: str,
        *,
        name: str,
        algorithms: Sequence[str] = ("sha256",),
        expected_size: int | None = None,
        progress: ProgressCallback = ignore_progress,
        mirrors: Sequence[str] = (),
    ) -> FetchResult:
        """Fetch ``url`` to ``tmp_dir/<name>.part``, resuming what an earlier run left there.

        ``mirrors`` are other URLs of the same file that segments may come from; the bytes of
        all of them are hashed together, so the caller's digest check judges them all.
        ``tmp_dir/<name>.lock`` is held throughout: a second caller for the same name waits,
        then finds the bytes already there and only confirms them with the server.
        """
        if not _SAFE_NAME.fullmatch(name):
            raise FetchError(f"invalid download name {name!r}: use letters, digits, '.', '_', '-'")
        algs = _algorithms(algorithms)
        url_scheme = scheme(url)
        with writing(self.tmp_dir):
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        partial = Partial(self.tmp_dir / f"{name}.part", url, algs)
        job = _Job(url, partial, expected_size, Meter(progress, _label(url)))
        with FileLock(self.tmp_dir / f"{name}.lock"):
            if url_scheme == "file":
                self._copy(job)
            else:
                fetched = self._segmented(job, mirrors)
                if fetched is not None:
                    return fetched
                partial.adopt(self.chunk_size)
                self.transport.retrying(
                    url, lambda: self._attempt(job), lambda: partial.size, partial.path
                )
            if expected_size is not None and partial.size != expected_size:
                size = partial.size  # discard() zeroes it; the message must say what was got
                partial.discard()
                size_mismatch(url, size, expected_size)
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

    def _segmented(self, job: _Job, mirrors: Sequence[str]) -> FetchResult | None:
        """The download by segments when it can be one (None: use one connection).

        Not for a small file (known small, or the server says so), a server that does not
        honour Range, nor over a one-connection partial of an earlier run (it resumes as it
        was); an earlier segmented partial resumes by segments whatever ``connections`` says.
        """
        path = job.partial.path
        if not segmented_partial(path, job.url):
            small = job.expected_size is not None and job.expected_size <= self.segment_size
            if self.connections < 2 or small or plain_partial(path, job.url):
                return None
        urls = (job.url, *(m for m in mirrors if scheme(m) != "file" and m != job.url))
        request = segments.Request(
            urls,
            path,
            job.partial.algorithms,
            job.expected_size,
            self.connections,
            self.chunk_size,
            self.segment_size,
        )
        try:
            return segments.fetch(self.transport, request, job.meter)
        except segments.NoRanges:
            return None

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
                got = content_range(resp)
                if got is None or got[0] != partial.size:
                    partial.discard()
                    raise Transient("the server answered a different range than requested")
                if not partial.same_object(resp):
                    partial.discard()
                    raise Transient("the file changed on the server while resuming")
                total = got[2]
            elif status == 200:  # fresh, or the server ignored Range / the object changed
                partial.restart(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
                total = content_length(resp)
            else:
                raise_for_status(resp, job.url)
            if job.expected_size is not None and total not in (None, job.expected_size):
                partial.discard()
                size_mismatch(job.url, total, job.expected_size)
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
                    size_mismatch(
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
                    size_mismatch(job.url, total, job.expected_size)
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
    partial: Partial
    expected_size: int | None
    meter: Meter
    transferred: int = 0
    final_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.final_url = self.url


def _algorithms(requested: Sequence[str]) -> list[str]:
    algs = list(dict.fromkeys(["sha256", *(a.lower() for a in requested)]))
    unknown = [a for a in algs if a not in _ALGORITHMS]
    if unknown:
        raise FetchError(f"unsupported digest algorithm {unknown[0]!r}: use sha256 or sha512")
    return algs


def _label(url: str) -> str:
    return PurePosixPath(unquote(urlsplit(url).path)).name or url


def _unsatisfied_total(resp: requests.Response) -> int | None:
    match = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None
