"""One disk file into ``blobs/``: found stored and intact, or downloaded, checked and inspected.

Shared by downloaded images (sources.http) and local files given as URLs (sources.local): the
expected digest keys a lock (one download per disk, however many processes want it), bytes are
hashed while written, checked against the expectation and inspected before ``blobs/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from imagekit.core.digest import file_digest, hexpart, sha256_bytes
from imagekit.disk import header, qemu_img
from imagekit.errors import FetchError, ImagekitError, StoreError
from imagekit.net.download import FetchResult
from imagekit.net.metadata import UpstreamCache
from imagekit.net.metalink import mirror_urls
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import (
    BLOB_MEDIA,
    qemu_format,
)
from imagekit.progress import ProgressEvent
from imagekit.sources.session import Session
from imagekit.verify.policy import (
    Expectation,
)


@dataclass(frozen=True)
class DiskRequest:
    """One disk to bring into ``blobs/``: where from, its format, what it must hash to."""

    url: str
    disk_format: str
    expect: Expectation
    mirrors: tuple[str, ...] = ()  # the same file elsewhere: segments may come from them too
    metalink: str | None = None  # lists more of those; read only when the bytes are fetched


class FetchedDisk(NamedTuple):
    """A disk in ``blobs/``: its descriptor, ``qemu-img info``, and where its bytes came from."""

    descriptor: Descriptor
    info: dict[str, Any]
    fetched_from: str | None  # the final URL, after redirects; None: already in the store


def fetch_disk(
    session: Session, request: DiskRequest, *, cache: UpstreamCache | None = None
) -> FetchedDisk:
    """Download (or find) the disk bytes, check them, move them into ``blobs/``.

    ``cache`` maps other digests (Debian lists only sha512) to the sha256 the store is keyed
    by, so a file stored before is found without downloading it again. A stored copy stands in
    for a download, so it is checked like one (size, sha256); a damaged one is fetched again.
    """
    layout, progress = session.layout, session.progress
    url, expect = request.url, request.expect
    media_type = BLOB_MEDIA[request.disk_format]
    qemu = qemu_format(request.disk_format)
    known = expect.digests.get("sha256") or (cache.sha256_for(expect.digests) if cache else None)
    lock_key = f"sha256:{known}" if known else "url:" + hexpart(sha256_bytes(url.encode()))
    with layout.digest_lock(lock_key):
        if known and _stored_intact(session, f"sha256:{known}", expect.size):
            progress(ProgressEvent("fetch", "already in the store", 1, 1))
            descriptor = layout.stored(f"sha256:{known}", media_type)
            info = qemu_img.info(layout.blob_path(descriptor.digest), qemu)
            return FetchedDisk(descriptor, info, None)
        if session.options.offline:
            raise FetchError(
                f"offline, and {url} is not in the store yet: pull it once without --offline"
            )
        mirrors = request.mirrors
        if request.metalink:
            got = cache.fetch(request.metalink) if cache else None
            body = got.body if got else session.transport.fetch_small(request.metalink).body
            found = mirror_urls(body, _filename(url), request.metalink)
            mirrors = tuple(dict.fromkeys(m for m in (*mirrors, *found) if m != url))
        algorithms = sorted({"sha256", *expect.digests})
        name = hexpart(sha256_bytes(url.encode()))[:32]
        result = session.downloader.download(
            url,
            name=name,
            algorithms=algorithms,
            expected_size=expect.size,
            progress=progress,
            mirrors=mirrors,
        )
        try:
            expect.check(result.digests, result.size, url)
            progress(ProgressEvent("inspect", "checking the disk header"))
            header.ensure_safe(result.path, request.disk_format)
            info = qemu_img.info(result.path, qemu)
        except ImagekitError:
            _discard(result)
            raise
        digest = "sha256:" + result.digests["sha256"]
        progress(ProgressEvent("store", f"storing {digest[:19]}"))
        descriptor = layout.commit_file(result.path, digest, media_type)
        _discard(result)  # only the resume sidecar is left; the bytes are in blobs/ now
        if cache is not None:
            cache.remember(result.digests)
        return FetchedDisk(descriptor, info, result.url)


def _stored_intact(session: Session, digest: str, size: int | None) -> bool:
    """Whether ``digest`` is in the store and still hashes to its name (and has ``size``).

    Hashing the local copy costs far less than the download it saves. A damaged copy is
    fetched again, and ``commit_file`` replaces it with the good bytes.
    """
    layout = session.layout
    path = layout.blob_path(digest)
    try:
        if not path.is_file():
            return False
        intact = (size is None or path.stat().st_size == size) and file_digest(path) == digest
    except OSError as exc:
        raise StoreError(f"cannot read blob {digest} ({path}): {exc.strerror or exc}") from exc
    if not intact and session.options.offline:
        raise StoreError(
            f"blob {digest} in the store is damaged and --offline forbids fetching it again: "
            "run `imagekit fsck`, then pull again without --offline"
        )
    if not intact:
        session.progress(ProgressEvent("fetch", f"stored {digest[:19]} is damaged: fetching it"))
    return intact


def _discard(result: FetchResult) -> None:
    """Drop a download and its resume sidecar (failed checks must not be resumed later)."""
    for path in (result.path, result.path.with_name(result.path.name + ".json")):
        path.unlink(missing_ok=True)


def _filename(url: str) -> str:
    """The file a URL names: what a metalink lists it as."""
    return PurePosixPath(unquote(urlsplit(url).path)).name
