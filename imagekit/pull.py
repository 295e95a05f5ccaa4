"""Pull: recipe → resolve → plan → fetch → verify → inspect → store → tag.

Ordering matters for safety: the checksum file and signature are verified *before* the image is
downloaded, so the expected digest is known up front. That digest keys a lock (one download per
image, however many processes pull it) and a store lookup (a blob already present is not fetched
again). Bytes are hashed while written, checked against the expectation, then inspected in Python
before any qemu tool opens them; only then do they enter ``blobs/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagekit import diskformat, qemu_img
from imagekit.errors import FetchError, ImagekitError, RecipeError, StoreError, VerificationError
from imagekit.fetch import Downloader, FetchResult
from imagekit.image import Image
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress
from imagekit.recipe import HttpSource, Recipe
from imagekit.refs import parse_ref
from imagekit.resolve import DEFAULT_TTL, Target, UpstreamCache, on_mirror, resolve
from imagekit.store import (
    MEDIA_DISK_QCOW2,
    MEDIA_DISK_RAW,
    MEDIA_EVIDENCE_CHECKSUM,
    MEDIA_EVIDENCE_SIGNATURE,
    Descriptor,
    Store,
)
from imagekit.verify import (
    CHECKSUM_OVER_TLS,
    UNVERIFIED,
    Expectation,
    checksum_transport,
    expectation_for,
    require_level,
    verify_checksum_file,
)

RECIPE_DIGEST_ANNOTATION = "org.imagekit.recipe.digest"
CREATED_ANNOTATION = "org.opencontainers.image.created"
# The concrete file a pull resolved to, in the manifest itself: enough to repeat the pull.
SOURCE_URL_ANNOTATION = "org.imagekit.source.url"
SOURCE_FILENAME_ANNOTATION = "org.imagekit.source.filename"
SOURCE_DIGEST_ANNOTATION = "org.imagekit.source.digest"
MEDIA_ISO = "application/vnd.imagekit.iso"  # an installer ISO (source format "iso")
DISK_MEDIA = {"qcow2": MEDIA_DISK_QCOW2, "raw": MEDIA_DISK_RAW, "iso": MEDIA_ISO}
# qemu-img info fields worth keeping; the rest (temp file names) would make provenance noisy.
_INFO_FIELDS = ("format", "virtual-size", "cluster-size", "format-specific", "dirty-flag")


@dataclass(frozen=True)
class Plan:
    """Concrete URLs for one pull, after mirror rewriting."""

    url: str
    checksum_url: str | None
    signature_url: str | None
    mirror: str | None


@dataclass(frozen=True)
class _Options:
    """How a pull may use the network (see :func:`pull`)."""

    mirror: str | None
    refresh: bool
    offline: bool
    allow_loopback_http: bool
    metadata_ttl: float


def plan(source: HttpSource, mirror: str | None = None) -> Plan:
    """Rewrite the recipe's URLs onto a mirror: ``mirror_root`` is replaced by ``mirror``."""

    def rewrite(url: str | None) -> str | None:
        return None if url is None else on_mirror(url, source.mirror_root, mirror)

    return Plan(
        url=on_mirror(source.url, source.mirror_root, mirror),
        checksum_url=rewrite(source.checksum_url),
        signature_url=rewrite(source.signature_url),
        mirror=mirror or None,
    )


def pull(
    store: Store,
    recipe: Recipe,
    *,
    mirror: str | None = None,
    tag: str | None = None,
    refresh: bool = False,
    offline: bool = False,
    allow_loopback_http: bool = False,
    metadata_ttl: float = DEFAULT_TTL,
    progress: ProgressCallback = ignore_progress,
    downloader: Downloader | None = None,
) -> Image:
    """Fetch, verify and store the recipe's image and tag it ``name:version`` (or ``tag``).

    A ref already made from the same recipe, resolved to the same file, is returned without
    downloading; within ``metadata_ttl`` seconds (or ``offline``) without any request at all.
    ``refresh`` re-checks upstream metadata and ignores the ref; ``offline`` makes no request
    (cached metadata, stored blobs); ``allow_loopback_http`` lets checksum-over-tls recipes
    read checksum files over plain http from 127.0.0.1/localhost (tests, a local proxy).
    """
    source = recipe.source
    if not isinstance(source, HttpSource) or recipe.customize:
        raise RecipeError(
            f"{recipe.name} is built, not downloaded (source kind {source.kind!r}"
            + (", with customize steps" if recipe.customize else "")
            + "): use 'imagekit build'"
        )
    ref = str(parse_ref(tag)) if tag else recipe.ref
    options = _Options(mirror, refresh, offline, allow_loopback_http, metadata_ttl)
    fetcher = downloader or Downloader(store.tmp_dir)
    with store.shared_lock(), _upstream(store, fetcher, options) as cache:
        target = resolve(recipe, cache=cache, mirror=mirror)
        if not refresh:
            hit = _cached(store, ref, target.identity)
            if hit is not None:
                progress(ProgressEvent("done", f"{ref} is up to date"))
                return hit
        image = _fetch_target(store, recipe, target, cache, fetcher, options, progress)
        return _tag(store, ref, target.identity, image, progress)


def fetch_image(
    store: Store,
    recipe: Recipe,
    *,
    mirror: str | None = None,
    refresh: bool = False,
    offline: bool = False,
    allow_loopback_http: bool = False,
    metadata_ttl: float = DEFAULT_TTL,
    progress: ProgressCallback = ignore_progress,
    downloader: Downloader | None = None,
) -> Image:
    """Resolve, fetch, verify and store the recipe's image without tagging it (build's base).

    The caller holds the store's shared lock, so gc cannot sweep the untagged manifest.
    The options mean what they mean for :func:`pull`.
    """
    options = _Options(mirror, refresh, offline, allow_loopback_http, metadata_ttl)
    fetcher = downloader or Downloader(store.tmp_dir)
    with _upstream(store, fetcher, options) as cache:
        target = resolve(recipe, cache=cache, mirror=mirror)
        return _fetch_target(store, recipe, target, cache, fetcher, options, progress)


def source_identity(store: Store, recipe: Recipe, *, mirror: str | None = None) -> str:
    """What decides which bytes the recipe yields now: its resolved file, keys and pins.

    Build keys its downloaded base with this, so a new upstream compose is a new base.
    """
    options = _Options(mirror, False, False, False, DEFAULT_TTL)
    with _upstream(store, Downloader(store.tmp_dir), options) as cache:
        return resolve(recipe, cache=cache, mirror=mirror).identity


def _upstream(store: Store, fetcher: Downloader, options: _Options) -> UpstreamCache:
    return UpstreamCache(
        store.cache_dir / "upstream",
        fetcher,
        ttl=options.metadata_ttl,
        refresh=options.refresh,
        offline=options.offline,
    )


@dataclass(frozen=True)
class _Evidence:
    """The checksum file and signature as fetched, and what they make the bytes expected to be."""

    checksum: bytes | None
    signature: bytes | None
    expect: Expectation
    transport: str | None  # how the checksum file travelled, when that counts (https, loopback)


def _fetch_target(
    store: Store,
    recipe: Recipe,
    target: Target,
    cache: UpstreamCache,
    fetcher: Downloader,
    options: _Options,
    progress: ProgressCallback,
) -> Image:
    """Verify the evidence for the resolved file, then fetch, inspect and store it."""
    source = target.source
    urls = plan(source, options.mirror)
    if target.resolution is not None:
        progress(ProgressEvent("resolve", f"{recipe.ref} is {source.filename}"))
    progress(ProgressEvent("verify", f"checking evidence for {source.filename}"))
    evidence = _verify(recipe, target, urls, cache, options.allow_loopback_http)
    disk, info = _fetch_disk(
        store, fetcher, cache, urls.url, source.format, evidence.expect, options.offline, progress
    )
    stored = [
        store.add_bytes(data, media)
        for data, media in (
            (evidence.checksum, MEDIA_EVIDENCE_CHECKSUM),
            (evidence.signature, MEDIA_EVIDENCE_SIGNATURE),
        )
        if data is not None
    ]
    verification = _verification_record(evidence.expect, stored)
    verification["checksum_transport"] = evidence.transport
    if target.keys_override:
        verification["keys_override"] = [str(path) for path in target.keys_override]
    config = {
        **base_config(recipe.name, recipe.version, recipe.arch),
        "recipe": {
            "digest": recipe.digest,
            "path": str(recipe.path) if recipe.path else None,
            "text": recipe.text,
            "pin": recipe.pin or None,
        },
        "source": {
            "kind": "http",
            "url": source.url,
            "fetched_from": urls.url,
            "mirror": urls.mirror,
            "checksum_url": source.checksum_url,
            "signature_url": source.signature_url,
            "filename": source.filename,
            "resolved": target.resolution.record() if target.resolution else None,
        },
        "verification": verification,
        "disk": _disk_record(disk, info),
    }
    annotations = {
        CREATED_ANNOTATION: str(config["created"]),
        SOURCE_URL_ANNOTATION: source.url,
        SOURCE_FILENAME_ANNOTATION: source.filename,
        SOURCE_DIGEST_ANNOTATION: disk.digest,
    }
    manifest = store.write_manifest(config, [disk, *stored], annotations)
    return Image.from_descriptor(store, manifest)


def _verify(
    recipe: Recipe, target: Target, urls: Plan, cache: UpstreamCache, allow_loopback_http: bool
) -> _Evidence:
    """Check signature and transport, then settle what the image must hash to, or refuse."""
    source = target.source
    checksum = cache.get(urls.checksum_url) if urls.checksum_url else None
    signature = cache.get(urls.signature_url) if urls.signature_url else None
    checksums = None
    if checksum is not None:
        checksums = verify_checksum_file(
            checksum,
            signature=signature,
            keys=source.keys,
            fingerprints=source.fingerprints,
            source=urls.checksum_url or "checksum file",
        )
    transport = None
    if urls.checksum_url:
        transport = checksum_transport(urls.checksum_url, allow_loopback_http=allow_loopback_http)
    over_tls = source.level == CHECKSUM_OVER_TLS
    if over_tls and transport is None and not source.pinned:
        raise VerificationError(
            f"{recipe.name}: {urls.checksum_url} is not signed and did not come over TLS, so it "
            "proves nothing; use an https:// mirror (plain http is accepted only from "
            "127.0.0.1/localhost with --allow-loopback-http)"
        )
    expect = expectation_for(
        source.filename,
        checksums=checksums,
        pinned=source.pinned,
        insecure=source.insecure,
        over_tls=over_tls and transport is not None,
        metadata=target.resolution.digests if target.resolution else None,
    )
    require_level(source.required_level, expect.level, source.filename)
    return _Evidence(checksum, signature, expect, transport)


def import_file(
    store: Store,
    path: Path,
    ref: str,
    *,
    disk_format: str | None = None,
    progress: ProgressCallback = ignore_progress,
) -> Image:
    """Store a local qcow2/raw of the user's own, inspected like a download, recorded unverified."""
    parsed = parse_ref(ref)
    if not path.is_file():
        raise RecipeError(f"{path} is not a file")
    detected = diskformat.probe(path).format
    fmt = disk_format or detected
    if fmt not in diskformat.SUPPORTED_FORMATS:
        raise RecipeError(f"{path} is {detected}; only qcow2 and raw images can be imported")
    with store.shared_lock():
        fetcher = Downloader(store.tmp_dir)
        expect = Expectation(UNVERIFIED)
        disk, info = _fetch_disk(
            store, fetcher, None, path.resolve().as_uri(), fmt, expect, False, progress
        )
        config = {
            **base_config(parsed.name, parsed.tag, None),
            "source": {"kind": "local", "path": str(path.resolve())},
            "verification": _verification_record(expect, []),
            "disk": _disk_record(disk, info),
        }
        identity = "sha256:" + hashlib.sha256(f"import\0{disk.digest}".encode()).hexdigest()
        manifest = store.write_manifest(
            config, [disk], {CREATED_ANNOTATION: str(config["created"])}
        )
        return _tag(store, str(parsed), identity, Image.from_descriptor(store, manifest), progress)


def _cached(store: Store, ref: str, recipe_digest: str) -> Image | None:
    """The image ``ref`` names, if it was made from this very recipe and is complete."""
    try:
        descriptor = store.resolve(ref)
    except StoreError:
        return None
    if descriptor.annotations.get(RECIPE_DIGEST_ANNOTATION) != recipe_digest:
        return None
    try:
        image = Image.from_descriptor(store, descriptor, cached=True)
    except (StoreError, OSError, ValueError, KeyError):
        return None
    layers = image.manifest.get("layers", [])
    if all(store.has_blob(layer["digest"]) for layer in layers):
        return image
    return None


def _fetch_disk(
    store: Store,
    fetcher: Downloader,
    cache: UpstreamCache | None,
    url: str,
    disk_format: str,
    expect: Expectation,
    offline: bool,
    progress: ProgressCallback,
) -> tuple[Descriptor, dict[str, Any]]:
    """Download (or find) the disk bytes, check them, move them into ``blobs/``.

    ``cache`` maps other digests (Debian lists only sha512) to the sha256 the store is keyed
    by, so a file stored before is found without downloading it again.
    Returns the blob's descriptor and its ``qemu-img info``.
    """
    media_type = DISK_MEDIA[disk_format]
    known = expect.digests.get("sha256") or (cache.sha256_for(expect.digests) if cache else None)
    lock_key = f"sha256:{known}" if known else "url:" + hashlib.sha256(url.encode()).hexdigest()
    with store.digest_lock(lock_key):
        if known and store.has_blob(f"sha256:{known}"):
            progress(ProgressEvent("fetch", "already in the store", 1, 1))
            path = store.blob_path(f"sha256:{known}")
            info = qemu_img.info(path, _qemu_format(disk_format))
            return Descriptor(media_type, f"sha256:{known}", path.stat().st_size), info
        if offline:
            raise FetchError(
                f"offline, and {url} is not in the store yet: pull it once without --offline"
            )
        algorithms = sorted({"sha256", *expect.digests})
        name = hashlib.sha256(url.encode()).hexdigest()[:32]
        result = fetcher.download(
            url, name=name, algorithms=algorithms, expected_size=expect.size, progress=progress
        )
        try:
            expect.check(result.digests, result.size, url)
            progress(ProgressEvent("inspect", "checking the disk header"))
            diskformat.ensure_safe(result.path, disk_format)
            info = qemu_img.info(result.path, _qemu_format(disk_format))
        except ImagekitError:
            _discard(result)
            raise
        digest = "sha256:" + result.digests["sha256"]
        progress(ProgressEvent("store", f"storing {digest[:19]}"))
        descriptor = store.commit_file(result.path, digest, media_type)
        _discard(result)  # only the resume sidecar is left; the bytes are in blobs/ now
        if cache is not None:
            cache.remember(result.digests)
        return descriptor, info


def _qemu_format(disk_format: str) -> str:
    """qemu reads an ISO as raw bytes; it has no "iso" format of its own."""
    return "raw" if disk_format == "iso" else disk_format


def _discard(result: FetchResult) -> None:
    """Drop a download and its resume sidecar (failed checks must not be resumed later)."""
    for path in (result.path, result.path.with_name(result.path.name + ".json")):
        path.unlink(missing_ok=True)


def base_config(name: str, version: str, arch: str | None) -> dict[str, Any]:
    from imagekit import __version__

    return {
        "imagekit": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "name": name,
        "version": version,
        "arch": arch,
    }


def _verification_record(expect: Expectation, evidence: list[Descriptor]) -> dict[str, Any]:
    by_media = {d.media_type: d.digest for d in evidence}
    return {
        "level": expect.level,
        "signer": expect.signer,
        "digests": dict(expect.digests),
        "size": expect.size,
        "checksum_file": by_media.get(MEDIA_EVIDENCE_CHECKSUM),
        "signature": by_media.get(MEDIA_EVIDENCE_SIGNATURE),
    }


def _disk_record(disk: Descriptor, info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "digest": disk.digest,
        "size": disk.size,
        **{key: info[key] for key in _INFO_FIELDS if key in info},
    }


def _tag(store: Store, ref: str, identity: str, image: Image, progress: ProgressCallback) -> Image:
    """Point ``ref`` at ``image``, annotated with what made it (the cache-hit check reads it)."""
    manifest = store.resolve(image.digest)
    store.tag(
        ref,
        Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            {RECIPE_DIGEST_ANNOTATION: identity},
        ),
    )
    progress(ProgressEvent("done", f"{ref} stored"))
    return Image.load(store, ref)
