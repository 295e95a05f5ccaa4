"""The upstream-metadata cache: small files (metadata, checksums, signatures) kept in the store.

A cached file is fresh for a TTL; after that a conditional request revalidates it (a 304 costs
no body), and ``offline`` answers from the cache alone. Bodies are kept in diskcache (sqlite)
under ``cache/upstream`` with the final URL they came from (after redirects: trust that rests on
TLS is decided by it), and with the sha512 -> sha256 map that lets a file listed only by sha512
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
from imagekit.net.transport import Small, Transport

DEFAULT_TTL = 3600.0  # seconds a cached metadata file counts as fresh


@dataclass(frozen=True)
class Fetched:
    """A small upstream file's body and the final URL it came from, after redirects."""

    body: bytes
    url: str


@dataclass(frozen=True)
class _Entry:
    body: bytes
    final_url: str  # where the body came from; entries of older versions lack it: refetched
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
        self._seen: dict[str, Fetched] = {}
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
        return self.fetch(url).body

    def fetch(self, url: str) -> Fetched:
        """The body of ``url`` and the final URL it came from (what TLS trust is decided by)."""
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

    def _get(self, url: str) -> Fetched:
        entry = self._entry(url)
        if self.offline:
            if entry is None:
                raise FetchError(
                    f"offline, and {url} was never fetched (or was cached by an older imagekit): "
                    "run once without --offline to cache it"
                )
            return Fetched(entry.body, entry.final_url)
        if entry is None or self.refresh or time.time() - entry.checked >= self.ttl:
            entry = self._revalidate(url, entry)
            self._write(("url", url), entry.__dict__)
        return Fetched(entry.body, entry.final_url)

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

    def _revalidate(self, url: str, entry: _Entry | None) -> _Entry:
        """Ask upstream (conditionally, when a copy is cached) for the current body.

        A 304 keeps the cached body only when it arrived by the same final URL as that body
        did: a "not modified" from elsewhere (a new redirect) says nothing about those bytes.
        """
        validators = {}
        if entry is not None and entry.etag:
            validators["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            validators["If-Modified-Since"] = entry.last_modified
        small = self._fetch_small(url, entry, validators)
        if small.status == 304 and entry is not None and small.url == entry.final_url:
            return replace(entry, checked=time.time())
        if small.status == 304:
            small = self._fetch_small(url, entry, {})
        return _Entry(small.body, small.url, small.etag, small.last_modified, time.time())

    def _fetch_small(self, url: str, entry: _Entry | None, validators: dict[str, str]) -> Small:
        try:
            return self.transport.fetch_small(url, validators=validators)
        except FetchError as exc:
            raise FetchError(
                f"{exc}; or use --offline to rely on what was cached before"
                if entry is not None
                else str(exc)
            ) from exc


def _cache_error(error: Exception, directory: Path) -> StoreError:
    """diskcache speaks sqlite; say what it means for the user (a full disk, mostly)."""
    text = str(error)
    if "full" in text or (isinstance(error, OSError) and disk_full(error)):
        return StoreError(
            f"disk full while caching upstream metadata in {directory}: free space (or run "
            "`imagekit gc --partial`) and run again; nothing was stored"
        )
    return StoreError(f"the metadata cache in {directory} failed: {text}; delete it to reset it")
