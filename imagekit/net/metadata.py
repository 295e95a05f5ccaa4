"""The upstream-metadata cache: small files (metadata, checksums, signatures) kept in the store.

A cached file is fresh for a TTL; after that a conditional request revalidates it (a 304 costs
no body), and ``offline`` answers from the cache alone. Bodies are kept in diskcache (sqlite)
under ``cache/upstream``, with the sha512 -> sha256 map that lets a file listed only by sha512
(Debian) be found in the store without downloading it again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from imagekit.core.atomic import disk_full
from imagekit.errors import FetchError, StoreError
from imagekit.net.transport import Transport

DEFAULT_TTL = 3600.0  # seconds a cached metadata file counts as fresh


@dataclass(frozen=True)
class _Entry:
    body: bytes
    etag: str | None
    last_modified: str | None
    checked: float  # when upstream last confirmed this body


class UpstreamCache:
    """Small upstream files (metadata, checksum files, signatures) cached in the store.

    A cached file is fresh for ``ttl`` seconds; after that a conditional request
    (If-None-Match / If-Modified-Since) revalidates it and a 304 costs no body. ``refresh``
    revalidates at once; ``offline`` never touches the network. Each URL is read at most once
    per instance, so resolution and verification see the very same bytes.
    """

    def __init__(
        self,
        directory: Path,
        transport: Transport,
        *,
        ttl: float = DEFAULT_TTL,
        refresh: bool = False,
        offline: bool = False,
    ) -> None:
        self.directory = directory
        self.transport = transport
        self.ttl = ttl
        self.refresh = refresh
        self.offline = offline
        self._seen: dict[str, bytes] = {}
        self._db: Any = None

    def __enter__(self) -> UpstreamCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, url: str) -> bytes:
        """The body of ``url``: from this pull, the cache while fresh, or upstream."""
        if url not in self._seen:
            self._seen[url] = self._get(url)
        return self._seen[url]

    def sha256_for(self, digests: Mapping[str, str]) -> str | None:
        """The sha256 of bytes stored before under another digest (Debian lists only sha512)."""
        for algorithm, digest in digests.items():
            known = self._read(("digest", algorithm, digest))
            if isinstance(known, str):
                return known
        return None

    def remember(self, digests: Mapping[str, str]) -> None:
        """Record that bytes hashed to all of ``digests`` (computed here, so trustworthy)."""
        for algorithm, digest in digests.items():
            if algorithm != "sha256":
                self._write(("digest", algorithm, digest), digests["sha256"])

    def _get(self, url: str) -> bytes:
        entry = self._entry(url)
        if self.offline:
            if entry is None:
                raise FetchError(
                    f"offline, and {url} was never fetched: run once without --offline to cache it"
                )
            return entry.body
        if entry is not None and not self.refresh and time.time() - entry.checked < self.ttl:
            return entry.body
        fresh = self._fetch(url, entry)
        self._write(("url", url), fresh.__dict__)
        return fresh.body

    def _entry(self, url: str) -> _Entry | None:
        """The cached copy of ``url``; one written by another imagekit version counts as none."""
        raw = self._read(("url", url))
        try:
            return _Entry(**raw) if isinstance(raw, dict) else None
        except TypeError:
            return None

    def _read(self, key: tuple[str, ...]) -> Any:
        try:
            return self._open().get(key)
        except (sqlite3.Error, OSError) as e:
            raise _cache_error(e, self.directory) from e

    def _write(self, key: tuple[str, ...], value: Any) -> None:
        try:
            self._open().set(key, value)
        except (sqlite3.Error, OSError) as e:
            raise _cache_error(e, self.directory) from e

    def _open(self) -> Any:
        if self._db is None:
            import diskcache

            self._db = diskcache.Cache(str(self.directory))
        return self._db

    def _fetch(self, url: str, entry: _Entry | None) -> _Entry:
        validators = {}
        if entry is not None and entry.etag:
            validators["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            validators["If-Modified-Since"] = entry.last_modified
        try:
            small = self.transport.fetch_small(url, validators=validators)
        except FetchError as exc:
            raise FetchError(
                f"{exc}; or use --offline to rely on what was cached before"
                if entry is not None
                else str(exc)
            ) from exc
        if small.status == 304 and entry is not None:
            return replace(entry, checked=time.time())
        return _Entry(small.body, small.etag, small.last_modified, time.time())


def _cache_error(error: Exception, directory: Path) -> StoreError:
    """diskcache speaks sqlite; say what it means for the user (a full disk, mostly)."""
    text = str(error)
    if "full" in text or (isinstance(error, OSError) and disk_full(error)):
        return StoreError(
            f"disk full while caching upstream metadata in {directory}: free space (or run "
            "`imagekit gc --partial`) and run again; nothing was stored"
        )
    return StoreError(f"the metadata cache in {directory} failed: {text}; delete it to reset it")
