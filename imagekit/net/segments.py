"""Segmented downloads: several Range connections to one or more mirrors, one in-order hash.

Mirrors cap what one connection gets, so a large file is fetched as fixed-size segments by
several connections at once, each segment written where it belongs in the preallocated
``.part`` (pwrite). The digests still cover every byte exactly once and in order: the calling
thread hashes behind the *frontier*, the lowest offset below which every byte is written,
reading back what the workers just wrote (from the page cache, so memory stays a few chunks per
connection). The sidecar records which segments are complete (rewritten through
``core/atomic.py``), so a killed download resumes with the rest; a segment cut short is fetched
again from its start. The bytes of every mirror are judged by the caller's digest check, the
trust anchor: a mirror only has to serve the same length.

A server that answers a Range request with 200, or the whole file, or a different length, is
not used for segments; when no URL is left the caller falls back to one connection.

More connections help only when the mirror caps each one: when this machine is the limit (a
fast link, a busy CPU) extra threads only contend. So the first ``MEASURE`` bytes come over one
connection alone, which says how fast one is; then all connections start, and once each has
finished a segment, unless together they were clearly faster, the download goes on over one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagekit.core.writeback import WriteBack
from imagekit.errors import FetchError
from imagekit.net.partfile import (
    FetchResult,
    Meter,
    SegmentRecord,
    discard,
    read_sidecar,
    record_segments,
    recorded_segments,
    sidecar_of,
    size_mismatch,
    validator,
    writing,
)
from imagekit.net.ranges import MEASURE, Ramp, Segments
from imagekit.net.transport import Transient, Transport, content_range, raise_for_status

SEGMENT_SIZE = 8 << 20
_HASH_BLOCK = 4 << 20
_RECORD_INTERVAL = 0.25  # seconds between sidecar rewrites: at most a few segments are redone


class NoRanges(Exception):
    """Ranges cannot be used for this file (any more): fetch it with one connection."""


class _Dropped(Exception):
    """This URL answered a Range request wrongly; the segment goes to another one."""


class _Stopped(Exception):
    """Another worker failed, or the caller was interrupted: stop without marking anything."""


@dataclass(frozen=True)
class Request:
    """One file to fetch by segments."""

    urls: tuple[str, ...]  # the primary URL first, then mirrors of the same file
    part: Path
    algorithms: Sequence[str]
    expected_size: int | None
    connections: int
    chunk_size: int = 1 << 20
    segment_size: int = SEGMENT_SIZE


@dataclass(frozen=True)
class _Probe:
    url: str
    total: int
    etag: str | None
    last_modified: str | None


def fetch(transport: Transport, request: Request, meter: Meter) -> FetchResult:
    """Fetch ``request`` by segments; :class:`NoRanges` when one connection must do it.

    Raising NoRanges, nothing of a segmented partial is left behind; a plain partial of an
    earlier one-connection run is left alone for the caller to resume.
    """
    return _Fetch(transport, request, meter).run()


class _Fetch:
    """One segmented download: the probe, the worker threads, the hashing calling thread."""

    def __init__(self, transport: Transport, request: Request, meter: Meter) -> None:
        self.transport = transport
        self.request = request
        self.meter = meter
        self.part = request.part
        self.sidecar = sidecar_of(request.part)
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.urls: list[str] = []  # the URLs still used for segments, primary first
        self.transferred = 0
        self.ramp = Ramp(request.connections)
        self._alone_since: float | None = None  # the first chunk's arrival
        self._alone_from = 0  # bytes in by then
        self._record_lock = threading.Lock()
        self._recorded_at = 0.0

    def run(self) -> FetchResult:
        primary = self.request.urls[0]
        earlier = recorded_segments(read_sidecar(self.sidecar), primary)
        if_range = earlier.validator() if earlier else None
        probe = self.transport.retrying(primary, lambda: self._probe(if_range), kept=self.part)
        if probe is None:
            if earlier is not None:
                discard(self.part)  # the file changed, or the server no longer does ranges
            raise NoRanges
        expected = self.request.expected_size
        if expected is not None and probe.total != expected:
            discard(self.part)
            size_mismatch(primary, probe.total, expected)
        self.urls = [probe.url, *(u for u in self.request.urls[1:] if u != probe.url)]
        resumable = (
            earlier is not None
            and earlier.total == probe.total
            and (probe.etag is None or earlier.etag in (None, probe.etag))
        )
        if earlier is not None and not resumable:
            discard(self.part)
            earlier = None
        if earlier is None and probe.total <= self.request.segment_size:
            raise NoRanges  # one segment: one connection is as quick
        fd = self._open(probe, earlier)
        try:
            return self._fetch_all(fd, probe)
        finally:
            os.close(fd)

    # the probe ---------------------------------------------------------------------------

    def _probe(self, if_range: str | None) -> _Probe | None:
        """Ask for the first byte: a 206 naming the length says ranges work; None if not."""
        headers = {"Range": "bytes=0-0"}
        if if_range:
            headers["If-Range"] = if_range
        with self.transport.get(self.request.urls[0], headers) as resp:
            if resp.status_code == 200:
                return None  # no ranges, or (If-Range) the file changed: one connection
            if resp.status_code != 206:
                raise_for_status(resp, self.request.urls[0])
            got = content_range(resp)
            resp.raw.read(2, decode_content=False)  # the byte: the connection stays reusable
            if got is None or got[0] != 0 or got[2] is None:
                return None
            headers_ = resp.headers
            return _Probe(resp.url, got[2], headers_.get("ETag"), headers_.get("Last-Modified"))

    # the files ---------------------------------------------------------------------------

    def _open(self, probe: _Probe, earlier: SegmentRecord | None) -> int:
        """The ``.part`` at its full length: the earlier one, or a new sparse file.

        A new one is made with the old sidecar deleted first, so a crash in between never
        pairs old segment records with a new file.
        """
        if earlier is not None:
            with writing(self.part):
                try:
                    fd = os.open(self.part, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    fd = -1
            if fd >= 0 and os.fstat(fd).st_size == probe.total:
                self.segments = Segments(earlier.total, earlier.size, earlier.done)
                self.etag, self.last_modified = earlier.etag, earlier.last_modified
                self.resumed_from = self.segments.have
                return fd
            if fd >= 0:
                os.close(fd)
        with writing(self.part):
            self.sidecar.unlink(missing_ok=True)
            fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, probe.total)
            except OSError:
                os.close(fd)
                raise
        self.segments = Segments(probe.total, self.request.segment_size, frozenset())
        self.etag, self.last_modified = probe.etag, probe.last_modified
        self.resumed_from = 0
        self._record(force=True)
        return fd

    def _record(self, *, force: bool = False) -> None:
        """Rewrite the sidecar with the complete segments (at most every _RECORD_INTERVAL)."""
        with self._record_lock:
            now = time.monotonic()
            if not force and now - self._recorded_at < _RECORD_INTERVAL:
                return
            with self.cond:
                done = frozenset(self.segments.done)
            segs = self.segments
            record = SegmentRecord(self.etag, self.last_modified, segs.total, segs.size, done)
            record_segments(self.sidecar, self.request.urls[0], record)
            self._recorded_at = now

    # the workers -------------------------------------------------------------------------

    def _fetch_all(self, fd: int, probe: _Probe) -> FetchResult:
        segs = self.segments
        workers = [
            threading.Thread(target=self._work, args=(fd, w), daemon=True, name=f"segment-{w}")
            for w in range(max(1, min(self.request.connections, len(segs.pending))))
        ]
        for worker in workers:
            worker.start()
        try:
            with WriteBack(fd) as writeback:
                digests = self._hash(fd, writeback)
            with writing(self.part):
                os.fsync(fd)
        except BaseException as exc:
            with self.cond:
                if self.error is None:
                    self.error = _Stopped()
                self.cond.notify_all()
            for worker in workers:
                worker.join()
            if isinstance(exc, NoRanges):
                discard(self.part)
            else:
                self._record(force=True)  # what is complete stays complete for the next run
            raise
        for worker in workers:
            worker.join()
        self._record(force=True)
        self.meter.update(segs.total, segs.total, final=True)
        return FetchResult(
            path=self.part,
            size=segs.total,
            digests=digests,
            url=probe.url,
            etag=self.etag,
            last_modified=self.last_modified,
            resumed_from=self.resumed_from,
            transferred=self.transferred,
        )

    def _hash(self, fd: int, writeback: WriteBack) -> dict[str, str]:
        """Hash every byte in order as the frontier passes it; raise what stopped a worker.

        What is hashed is read no more: ``writeback`` may write it back and drop its pages."""
        segs = self.segments
        hashers = [hashlib.new(a) for a in self.request.algorithms]
        hashed = 0
        while hashed < segs.total:
            with self.cond:
                if segs.frontier() <= hashed and self.error is None:
                    self.cond.wait(0.1)
                limit, error, have = segs.frontier(), self.error, segs.have
            if error is not None:
                raise error
            self.meter.update(have, segs.total)
            while hashed < limit:
                block = os.pread(fd, min(_HASH_BLOCK, limit - hashed), hashed)
                if not block:
                    raise FetchError(f"{self.part} is shorter than its segments say; delete it")
                for h in hashers:
                    h.update(block)
                hashed += len(block)
                writeback.written(hashed)
        return {a: h.hexdigest() for a, h in zip(self.request.algorithms, hashers, strict=True)}

    def _work(self, fd: int, worker: int) -> None:
        segs, ramp = self.segments, self.ramp
        try:
            while True:
                with self.cond:
                    while worker >= ramp.allowed and ramp.single is None and self.error is None:
                        self.cond.wait()
                    if self.error is not None or not segs.pending or worker >= ramp.allowed:
                        return
                    i = segs.pending.popleft()
                began = time.monotonic()
                self._segment(fd, i, worker)
                with self.cond:
                    segs.done.add(i)
                    segs.got.pop(i, None)
                    now = time.monotonic()
                    ramp.done(segs.end(i) - segs.start(i), now - began, segs.have, now)
                    self.cond.notify_all()
                self._record()
        except BaseException as exc:
            with self.cond:
                if self.error is None:
                    self.error = exc
                self.cond.notify_all()

    def _segment(self, fd: int, i: int, worker: int) -> None:
        """Fetch segment ``i``, spreading retries over the URLs, dropping those that fail ranges."""
        turns = itertools.count(worker)

        def attempt() -> None:
            self._get_range(fd, i, self._url(next(turns)))

        while True:
            try:
                self.transport.retrying(
                    self.request.urls[0], attempt, lambda: self._got(i), self.part
                )
                return
            except _Dropped:
                continue

    def _url(self, turn: int) -> str:
        with self.cond:
            if not self.urls:
                raise NoRanges
            return self.urls[turn % len(self.urls)]

    def _got(self, i: int) -> int:
        with self.cond:
            return self.segments.got.get(i, 0)

    def _drop(self, url: str) -> None:
        with self.cond:
            if url in self.urls:
                self.urls.remove(url)
        raise _Dropped

    def _measure_alone(self, n: int) -> None:
        """Time what one connection gets alone, from its first chunk on (the request's round
        trip and TCP's slow start would make it look slower than it is)."""
        segs, now = self.segments, time.monotonic()
        if self._alone_since is None:
            self._alone_since, self._alone_from = now, segs.have
            return
        alone = segs.have - self._alone_from
        if alone >= MEASURE:
            self.ramp.done(alone, now - self._alone_since, segs.have, now)

    def _get_range(self, fd: int, i: int, url: str) -> None:
        segs = self.segments
        start, end = segs.start(i), segs.end(i)
        offset = start + self._got(i)
        headers = {"Range": f"bytes={offset}-{end - 1}"}
        primary = url == self.urls[0] if self.urls else False
        if_range = validator(self.etag, self.last_modified)
        if primary and if_range:
            headers["If-Range"] = if_range
        with self.transport.get(url, headers) as resp:
            if resp.status_code == 200 and primary:
                raise NoRanges  # the primary file changed (If-Range) or dropped ranges
            if resp.status_code == 200:
                self._drop(url)
            if resp.status_code != 206:
                raise_for_status(resp, url)
            if content_range(resp) != (offset, end - 1, segs.total):
                self._drop(url)
            for chunk in resp.raw.stream(self.request.chunk_size, decode_content=False):
                if self.error is not None:
                    raise _Stopped
                if offset + len(chunk) > end:
                    self._drop(url)
                _pwrite(fd, chunk, offset, self.part)
                offset += len(chunk)
                with self.cond:
                    segs.got[i] = offset - start
                    segs.have += len(chunk)
                    self.transferred += len(chunk)
                    if self.ramp.single is None:  # one connection alone so far: measure it
                        self._measure_alone(len(chunk))
                    self.cond.notify_all()
        if offset < end:
            raise Transient(f"connection closed {offset - start} bytes into a segment")


def _pwrite(fd: int, data: bytes, offset: int, path: Path) -> None:
    view = memoryview(data)
    with writing(path):
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
