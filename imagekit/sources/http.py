"""Downloaded images: resolve → verify the evidence → fetch → inspect → store → tag.

Ordering matters for safety: the checksum file and signature are verified *before* the image is
downloaded, so the expected digest is known up front. That digest keys a lock (one download per
image, however many processes pull it) and a store lookup (a blob already present is not fetched
again). Bytes are hashed while written, checked against the expectation, then inspected in Python
before any qemu tool opens them; only then do they enter ``blobs/``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypedDict
from urllib.parse import unquote, urlsplit

from imagekit import catalog, provenance
from imagekit.config import DEFAULT_CONNECTIONS
from imagekit.core.digest import file_digest, hexpart, sha256_bytes
from imagekit.core.refs import parse_ref
from imagekit.disk import header, qemu_img
from imagekit.errors import FetchError, ImagekitError, RecipeError, StoreError, VerificationError
from imagekit.image import Image
from imagekit.net.download import Downloader, FetchResult
from imagekit.net.metadata import DEFAULT_TTL, Fetched, UpstreamCache
from imagekit.net.metalink import mirror_urls
from imagekit.net.transport import Transport
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import (
    BLOB_MEDIA,
    CREATED_ANNOTATION,
    MEDIA_EVIDENCE_CHECKSUM,
    MEDIA_EVIDENCE_SIGNATURE,
    SOURCE_DIGEST_ANNOTATION,
    SOURCE_FILENAME_ANNOTATION,
    SOURCE_URL_ANNOTATION,
    qemu_format,
)
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress
from imagekit.recipe import HttpSource, Recipe
from imagekit.resolve.resolve import Target, on_mirror, resolve
from imagekit.verify.policy import (
    CHECKSUM_OVER_TLS,
    Expectation,
    evidence_transport,
    expectation_for,
    refuse_downgrade,
    require_level,
    verify_checksum_file,
)


@dataclass(frozen=True)
class FetchOptions:
    """How a pull may use the network, and whose keys it trusts.

    ``refresh`` re-checks upstream metadata and ignores a matching ref; ``offline`` makes no
    request (cached metadata, stored blobs only); ``allow_loopback_http`` lets checksum-over-tls
    recipes read checksum files over plain http from 127.0.0.1/localhost (tests, a local proxy);
    ``keys_override`` replaces every recipe's pinned keys, recorded in provenance;
    ``connections`` is how many Range connections a large image may use, ``mirrors`` more roots
    (beside the recipe's ``mirrors``) its bytes may come from.
    """

    mirror: str | None = None
    connections: int = DEFAULT_CONNECTIONS
    mirrors: tuple[str, ...] = ()
    refresh: bool = False
    offline: bool = False
    allow_loopback_http: bool = False
    metadata_ttl: float = DEFAULT_TTL
    keys_override: tuple[Path, ...] = ()


class NetworkOptions(TypedDict, total=False):
    """:class:`FetchOptions` as keyword arguments of the public API (``Store.pull(mirror=...)``)."""

    mirror: str | None
    connections: int
    mirrors: tuple[str, ...]
    refresh: bool
    offline: bool
    allow_loopback_http: bool
    metadata_ttl: float
    keys_override: tuple[Path, ...]


@dataclass
class Session:
    """What one pull or build shares: the store, the options, one transport and metadata cache."""

    layout: Layout
    options: FetchOptions
    progress: ProgressCallback = ignore_progress
    transport: Transport = field(default_factory=Transport)

    @property
    def downloader(self) -> Downloader:
        return Downloader(
            self.layout.tmp_dir, transport=self.transport, connections=self.options.connections
        )

    @contextmanager
    def upstream(self) -> Iterator[UpstreamCache]:
        with UpstreamCache(
            self.layout.cache_dir / "upstream",
            self.transport,
            ttl=self.options.metadata_ttl,
            refresh=self.options.refresh,
            offline=self.options.offline,
        ) as cache:
            yield cache

    def resolve(self, recipe: Recipe, cache: UpstreamCache) -> Target:
        return resolve(
            recipe,
            cache=cache,
            mirror=self.options.mirror,
            keys_override=self.options.keys_override,
        )


@dataclass(frozen=True)
class Plan:
    """Concrete URLs for one pull, after mirror rewriting."""

    url: str
    checksum_url: str | None
    signature_url: str | None
    mirror: str | None
    mirrors: tuple[str, ...] = ()  # the image on other mirrors: more places for its bytes


def plan(source: HttpSource, mirror: str | None = None, mirrors: Sequence[str] = ()) -> Plan:
    """Rewrite the recipe's URLs onto a mirror: ``mirror_root`` is replaced by ``mirror``.

    The image's URL on each of ``mirrors`` and the recipe's own is where its segments may also
    come from; the evidence is read from one place only.
    """

    def rewrite(url: str | None) -> str | None:
        return None if url is None else on_mirror(url, source.mirror_root, mirror)

    url = on_mirror(source.url, source.mirror_root, mirror)
    others = (on_mirror(source.url, source.mirror_root, m) for m in (*source.mirrors, *mirrors))
    return Plan(
        url=url,
        checksum_url=rewrite(source.checksum_url),
        signature_url=rewrite(source.signature_url),
        mirror=mirror or None,
        mirrors=tuple(u for u in dict.fromkeys(others) if u != url),
    )


def pull(session: Session, recipe: Recipe, *, tag: str | None = None) -> Image:
    """Fetch, verify and store the recipe's image and tag it ``name:version`` (or ``tag``).

    A ref already made from the same recipe, resolved to the same file, is returned without
    downloading; within the metadata TTL (or offline) without any request at all.
    """
    source = recipe.source
    if not isinstance(source, HttpSource) or recipe.customize:
        raise RecipeError(
            f"{recipe.name} is built, not downloaded (source kind {source.kind!r}"
            + (", with customize steps" if recipe.customize else "")
            + "): use 'imagekit build'"
        )
    ref = str(parse_ref(tag)) if tag else recipe.ref
    layout = session.layout
    with layout.shared_lock(), session.upstream() as cache:
        target = session.resolve(recipe, cache)
        if not session.options.refresh:
            hit = catalog.find(layout, ref, target.identity)
            if hit is not None:
                session.progress(ProgressEvent("done", f"{ref} is up to date"))
                return hit
        image = _fetch_target(session, recipe, target, cache)
        manifest = layout.resolve(image.digest)
        return catalog.tag(layout, ref, target.identity, manifest, session.progress)


def fetch_image(session: Session, recipe: Recipe) -> Image:
    """Resolve, fetch, verify and store the recipe's image without tagging it (build's base).

    The caller holds the store's shared lock, so gc cannot sweep the untagged manifest.
    """
    with session.upstream() as cache:
        return _fetch_target(session, recipe, session.resolve(recipe, cache), cache)


def source_identity(session: Session, recipe: Recipe) -> str:
    """What decides which bytes the recipe yields now: its resolved file, keys and pins.

    Build keys its downloaded base with this, so a new upstream compose is a new base.
    """
    with session.upstream() as cache:
        return session.resolve(recipe, cache).identity


@dataclass(frozen=True)
class _Evidence:
    """The checksum file and signature as fetched, and what they make the bytes expected to be."""

    checksum: Fetched | None
    signature: Fetched | None
    metadata: tuple[Fetched, ...]  # what resolution read (it chose the file)
    expect: Expectation
    transport: str | None  # how the evidence travelled, when that counts (https, loopback)


def _fetch_target(session: Session, recipe: Recipe, target: Target, cache: UpstreamCache) -> Image:
    """Verify the evidence for the resolved file, then fetch, inspect and store it."""
    layout, progress = session.layout, session.progress
    source = target.source
    urls = plan(source, session.options.mirror, session.options.mirrors)
    if target.resolution is not None:
        progress(ProgressEvent("resolve", f"{recipe.ref} is {source.filename}"))
    progress(ProgressEvent("verify", f"checking evidence for {source.filename}"))
    evidence = _verify(recipe, target, urls, cache, session.options.allow_loopback_http)
    disk, info, fetched_from = fetch_disk(
        session,
        DiskRequest(urls.url, source.format, evidence.expect, urls.mirrors, source.metalink),
        cache=cache,
    )
    stored = [
        layout.add_bytes(fetched.body, media)
        for fetched, media in (
            (evidence.checksum, MEDIA_EVIDENCE_CHECKSUM),
            (evidence.signature, MEDIA_EVIDENCE_SIGNATURE),
        )
        if fetched is not None
    ]
    verification = provenance.verification_record(evidence.expect, stored)
    verification["checksum_transport"] = evidence.transport
    if target.keys_override:
        verification["keys_override"] = [str(path) for path in target.keys_override]
    config = {
        **provenance.recipe_config(recipe),
        "source": {
            "kind": "http",
            "url": source.url,
            "fetched_from": fetched_from,
            "mirror": urls.mirror,
            "mirrors": list(urls.mirrors),
            "metalink": source.metalink,
            "checksum_url": source.checksum_url,
            "checksum_url_fetched": evidence.checksum.url if evidence.checksum else None,
            "signature_url": source.signature_url,
            "signature_url_fetched": evidence.signature.url if evidence.signature else None,
            "metadata_fetched": [fetched.url for fetched in evidence.metadata],
            "filename": source.filename,
            "resolved": target.resolution.record() if target.resolution else None,
        },
        "verification": verification,
        "disk": provenance.disk_record(disk, info),
    }
    annotations = {
        CREATED_ANNOTATION: str(config["created"]),
        SOURCE_URL_ANNOTATION: source.url,
        SOURCE_FILENAME_ANNOTATION: source.filename,
        SOURCE_DIGEST_ANNOTATION: disk.digest,
    }
    manifest = layout.write_manifest(config, [disk, *stored], annotations)
    return Image.from_descriptor(layout, manifest)


def _verify(
    recipe: Recipe, target: Target, urls: Plan, cache: UpstreamCache, allow_loopback_http: bool
) -> _Evidence:
    """Check signature and transport, then settle what the image must hash to, or refuse."""
    source = target.source
    checksum = cache.fetch(urls.checksum_url) if urls.checksum_url else None
    signature = cache.fetch(urls.signature_url) if urls.signature_url else None
    # Resolution read these (already in this pull's cache): they chose the file, so they count.
    asked = target.resolution.metadata if target.resolution else ()
    metadata = tuple(cache.fetch(url) for url in asked)
    checksums = None
    if checksum is not None:
        checksums = verify_checksum_file(
            checksum.body,
            signature=signature.body if signature else None,
            keys=source.keys,
            fingerprints=source.fingerprints,
            source=urls.checksum_url or "checksum file",
        )
    carried = [("metadata file", url, got) for url, got in zip(asked, metadata, strict=True)]
    if urls.checksum_url and checksum is not None:
        carried.append(("checksum file", urls.checksum_url, checksum))
    transport = None
    if checksum is not None:
        finals = [fetched.url for _, _, fetched in carried]
        transport = evidence_transport(finals, allow_loopback_http=allow_loopback_http)
    over_tls = source.level == CHECKSUM_OVER_TLS
    signed = checksums is not None and checksums.signer is not None
    if over_tls and not source.pinned and not signed:
        _require_tls(recipe, carried, allow_loopback_http)
    expect = expectation_for(
        source.filename,
        checksums=checksums,
        pinned=source.pinned,
        insecure=source.insecure,
        over_tls=over_tls and transport is not None,
        metadata=target.resolution.digests if target.resolution else None,
    )
    require_level(source.required_level, expect.level, source.filename)
    return _Evidence(checksum, signature, metadata, expect, transport)


def _require_tls(
    recipe: Recipe, carried: list[tuple[str, str, Fetched]], allow_loopback_http: bool
) -> None:
    """The level rests on TLS: each piece of evidence, by its final URL, came over it."""
    for what, requested, fetched in carried:
        refuse_downgrade(requested, fetched.url, f"{recipe.name}: the {what}")
    for _, _, fetched in carried:
        if evidence_transport([fetched.url], allow_loopback_http=allow_loopback_http) is None:
            raise VerificationError(
                f"{recipe.name}: {fetched.url} is not signed and did not come over TLS, so it "
                "proves nothing; use an https:// mirror (plain http is accepted only from "
                "127.0.0.1/localhost with --allow-loopback-http)"
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
