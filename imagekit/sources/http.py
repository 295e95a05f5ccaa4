"""Downloaded images: resolve → verify the evidence → fetch → inspect → store → tag.

Ordering matters for safety: the checksum file and signature are verified *before* the image is
downloaded, so the expected digest is known up front. That digest keys a lock (one download per
image, however many processes pull it) and a store lookup (a blob already present is not fetched
again). Bytes are hashed while written, checked against the expectation, then inspected in Python
before any qemu tool opens them; only then do they enter ``blobs/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagekit import catalog, provenance
from imagekit.core.refs import parse_ref
from imagekit.errors import RecipeError, VerificationError
from imagekit.image import Image
from imagekit.net.metadata import Fetched, UpstreamCache
from imagekit.oci.media import (
    CREATED_ANNOTATION,
    MEDIA_EVIDENCE_CHECKSUM,
    MEDIA_EVIDENCE_SIGNATURE,
    SOURCE_DIGEST_ANNOTATION,
    SOURCE_FILENAME_ANNOTATION,
    SOURCE_URL_ANNOTATION,
)
from imagekit.progress import ProgressEvent
from imagekit.recipe import HttpSource, Recipe
from imagekit.resolve.resolve import Target, on_mirror
from imagekit.sources.disk import DiskRequest, fetch_disk
from imagekit.sources.session import Session
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


def verified_identity(session: Session, recipe: Recipe) -> dict[str, Any]:
    """What decides which bytes the recipe yields now, proven: its resolved file and the
    digests its verified evidence expects (no image byte is read).

    Build keys its downloaded base with this, so a new upstream compose, or a new signed
    checksum file at the same URL, is a new base; within the metadata TTL it makes no request.
    """
    with session.upstream() as cache:
        target = session.resolve(recipe, cache)
        urls = plan(target.source, session.options.mirror)
        evidence = _verify(recipe, target, urls, cache, session.options.allow_loopback_http)
    resolution = target.resolution
    return {
        "identity": target.identity,
        "filename": target.source.filename,
        "compose": resolution.compose if resolution else None,
        "level": evidence.expect.level,
        "digests": dict(sorted(evidence.expect.digests.items())),
        "size": evidence.expect.size,
    }


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
