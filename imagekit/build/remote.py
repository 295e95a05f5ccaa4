"""The build cache shared through a registry: one small OCI manifest per layer, tagged by key.

A layer built for key ``sha256:<hex>`` is published at tag ``cache-<hex>``: a manifest whose one
layer is the qcow2 overlay (with its parent annotation) and whose config is the step's record
(inspection, messages: what ``cache/build/<key>.record`` holds). Another builder asks for that
tag before it would launch the appliance. The registry is no authority: an entry is used only
if its layer builds on the very parent this builder holds (a digest chain from a verified
base), its bytes match their digests, its header is safe like any untrusted image's, and, when
``[trust] require`` covers the cache's tag, a trusted key signed it. Anything else is a miss
with a note, and the step is built here; a cache that cannot be reached is a miss too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit.build.cache import BuildCache
from imagekit.core.digest import canonical_json, hexpart
from imagekit.disk import header
from imagekit.errors import ImagekitError, UnsafeImageError, VerificationError
from imagekit.net.transport import Transport
from imagekit.oci import transfer
from imagekit.oci.descriptor import layer_annotations
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import DISK_FORMATS, MEDIA_DISK_QCOW2, MEDIA_MANIFEST, PARENT_ANNOTATION
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.oci.transfer import TransferOptions
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress
from imagekit.verify import remote as signatures
from imagekit.verify.trust import TrustPolicy

if TYPE_CHECKING:
    from imagekit.verify.keys import PrivateKey

CACHE_ARTIFACT = "application/vnd.imagekit.build-cache.v1"
MEDIA_CACHE_RECORD = "application/vnd.imagekit.build-cache.record.v1+json"
KEY_ANNOTATION = "org.imagekit.build.key"
RECORD_MAX = 1 << 20  # a step record is inspection + messages: kilobytes, never megabytes


def cache_tag(key: str) -> str:
    """The tag a layer of build key ``key`` is published under (tags allow 128 characters)."""
    return f"cache-{hexpart(key)}"


@dataclass(frozen=True)
class Found:
    """A remote lookup's outcome: the layer now in the local cache, or why there is none."""

    layer: Descriptor | None = None
    note: str = ""


@dataclass(frozen=True)
class CacheOptions:
    """Where a build shares its layers, and how to reach and trust that registry."""

    cache_from: str | None = None  # oci://HOST/REPO to look layers up in
    cache_to: str | None = None  # oci://HOST/REPO to publish every layer of the build to
    insecure: bool = False  # plain http to a registry that is not on loopback
    transport: Transport | None = None
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    sign_key: PrivateKey | None = None  # signs each published cache manifest


class RemoteCache:
    """One build's view of the shared cache: lookups before launches, publishing after."""

    def __init__(
        self,
        layout: Layout,
        options: CacheOptions,
        progress: ProgressCallback = ignore_progress,
    ) -> None:
        self.layout = layout
        self.cache = BuildCache(layout)
        self.options = options
        self.progress = progress
        self.source = RegistryRef.parse(options.cache_from) if options.cache_from else None
        self.target = RegistryRef.parse(options.cache_to) if options.cache_to else None

    def _registry(self, ref: RegistryRef) -> Registry:
        return Registry(
            ref.host,
            transport=self.options.transport,
            insecure=self.options.insecure,
            repository=ref.repository,
        )

    @cached_property
    def _source_registry(self) -> Registry | None:
        return self._registry(self.source) if self.source else None

    # --- lookup --------------------------------------------------------------------------

    def find(self, key: str, parent: Descriptor) -> Found:
        """The layer for ``key`` from ``cache_from``, checked and committed into the local
        store and cache; a miss (with a note when an entry was there but refused) otherwise."""
        registry = self._source_registry
        if self.source is None or registry is None:
            return Found()
        ref = self.source.but(tag=cache_tag(key))
        try:
            if registry.manifest_digest(ref.repository, ref.reference) is None:
                return Found()
            self.progress(ProgressEvent("resolve", f"reading {ref}"))
            layer, record = self._fetch(registry, ref, key, parent)
        except ImagekitError as exc:
            return Found(note=f"remote cache entry {ref} not used ({exc}); built here")
        self.cache.save_record(key, record)
        self.cache.put(key, layer)
        return Found(layer, f"from {ref}")

    def _fetch(
        self, registry: Registry, ref: RegistryRef, key: str, parent: Descriptor
    ) -> tuple[Descriptor, dict[str, Any]]:
        remote = transfer.resolve(registry, ref, arch="x86_64")  # a manifest, never an index
        if len(remote.chain) != 1 or remote.named != remote.image.digest:
            raise VerificationError("a cache entry must be one manifest, with no subject")
        signatures.check(
            registry, ref.repository, remote.image.digest, str(ref), self.options.trust
        )
        layer, config = _entry(remote.image.json(), key, parent)
        transfer.fetch(
            self.layout,
            registry,
            remote,
            inspect=self._inspector(parent),
            options=TransferOptions(progress=self.progress),
        )
        record = json.loads(self.layout.read_blob(config.digest))
        if not isinstance(record, dict):
            raise VerificationError(f"cache record {config.digest} is not a JSON object")
        return layer, record

    def _inspector(self, parent: Descriptor) -> transfer.Inspect:
        """The overlay may be qcow2 only and name as backing file only the local parent."""
        blobs_dir = self.layout.blobs_dir

        def inspect(desc: Descriptor, path: Path, _below: Descriptor | None) -> None:
            if desc.media_type not in DISK_FORMATS:
                return
            found = header.ensure_safe(path, "qcow2", allowed_backing_dir=blobs_dir)
            wanted = (hexpart(parent.digest), DISK_FORMATS[parent.media_type])
            if (found.backing_file, found.backing_format) != wanted:
                raise UnsafeImageError(
                    f"layer {desc.digest} is backed by {found.backing_file!r} "
                    f"({found.backing_format}), not by this build's parent {wanted[0]}"
                )

        return inspect

    # --- publish -------------------------------------------------------------------------

    def publish(self, keys: list[str], layers: list[Descriptor]) -> int:
        """Put each (key, layer) of a build at its tag in ``cache_to`` (signed with
        ``sign_key``); returns how many tags were new or changed. The caller holds the
        layout's shared lock, so the staged manifests outlive the push."""
        if self.target is None:
            return 0
        registry = self._registry(self.target)
        published = 0
        for key, layer in zip(keys, layers, strict=True):
            digest = self._stage(key, layer)
            ref = self.target.but(tag=cache_tag(key))
            self.progress(ProgressEvent("push", f"cache layer {ref}"))
            report = transfer.push(
                self.layout, digest, ref, registry, TransferOptions(progress=self.progress)
            )
            published += report.manifests_put
            if self.options.sign_key is not None:
                signed_as = f"{ref.host}/{ref.repository}"
                signatures.sign(
                    self.layout, registry, ref, digest, self.options.sign_key, signed_as
                )
        return published

    def _stage(self, key: str, layer: Descriptor) -> str:
        """The cache manifest of ``key`` in the local layout (untagged: gc sweeps it)."""
        config = self.layout.add_bytes(canonical_json(self.cache.record(key)), MEDIA_CACHE_RECORD)
        body = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "artifactType": CACHE_ARTIFACT,
                "config": config.to_json(),
                "layers": [layer.to_json()],
                "annotations": {KEY_ANNOTATION: key},
            }
        )
        return self.layout.add_bytes(body, MEDIA_MANIFEST).digest


def _entry(obj: dict[str, Any], key: str, parent: Descriptor) -> tuple[Descriptor, Descriptor]:
    """(layer, config) of a cache manifest, refused before any download unless it is one
    qcow2 overlay on ``parent`` recorded for ``key``."""
    config = Descriptor.from_json(obj["config"])
    layers = [Descriptor.from_json(d) for d in obj["layers"]]
    annotations = obj.get("annotations") or {}
    if obj.get("artifactType") != CACHE_ARTIFACT or config.media_type != MEDIA_CACHE_RECORD:
        raise VerificationError("it is not an imagekit build-cache entry")
    if annotations.get(KEY_ANNOTATION) != key:
        raise VerificationError(f"it was recorded for key {annotations.get(KEY_ANNOTATION)!r}")
    if config.size > RECORD_MAX:
        raise VerificationError(f"its record is {config.size} bytes, over {RECORD_MAX}")
    if len(layers) != 1 or layers[0].media_type != MEDIA_DISK_QCOW2:
        raise VerificationError("it must hold exactly one qcow2 layer")
    named = layers[0].annotations.get(PARENT_ANNOTATION)
    if named != parent.digest:
        raise VerificationError(f"its layer builds on {named}, not on this build's parent")
    digest = layers[0].digest  # annotated as a layer committed here would be
    annotations = layer_annotations(MEDIA_DISK_QCOW2, digest, {PARENT_ANNOTATION: named})
    return Descriptor(MEDIA_DISK_QCOW2, digest, layers[0].size, annotations), config
