"""Copy images between the local OCI layout and a registry, by digest, in both directions.

push: every blob of the image and of its ``subject`` chain (so a built image's base and its
provenance travel with it) is skipped when the registry has it, mounted from another repository
of the same registry when one is known to hold it, else uploaded in chunks that resume after a
kill; then the manifests go up, base first. pull: the manifest (by tag or digest, digest-checked),
its chain, and only the blobs missing locally, each streamed into ``tmp/``, hashed as written,
resumed with Range, checked for size and digest, and handed to the caller's inspection before it
may enter ``blobs/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from imagekit.errors import (
    FetchError,
    ImagekitError,
    RecipeError,
    StoreError,
    VerificationError,
)
from imagekit.oci import download, upload
from imagekit.oci.descriptor import manifest_descriptors
from imagekit.oci.download import Partial
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import DISK_FORMATS, MEDIA_INDEX, MEDIA_MANIFEST, oci_arch
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Manifest, Registry
from imagekit.oci.upload import MountHints
from imagekit.progress import Meter, ProgressCallback, ProgressEvent, ignore_progress

DEFAULT_CHUNK = 256 << 20  # few PATCHes: registries may fsync each one (distribution 2.8 does)
PARALLEL = 3  # blobs moved at once: enough to hide round trips, few enough not to thrash disks
_MAX_CHAIN = 64
_T = TypeVar("_T")

# Called on each downloaded blob before it enters blobs/: (descriptor, temp file, parent disk).
Inspect = Callable[[Descriptor, Path, Descriptor | None], None]


@dataclass(frozen=True)
class TransferOptions:
    """How a transfer moves bytes: chunk size of uploads, blobs at once, who hears progress."""

    chunk_size: int = DEFAULT_CHUNK
    parallel: int = PARALLEL
    progress: ProgressCallback = ignore_progress


@dataclass
class PushReport:
    """What a push did: blobs uploaded, mounted from another repository, or already there."""

    target: str
    digest: str
    uploaded: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0  # sent over the network by this push
    skipped_bytes: int = 0  # not sent: present, mounted, or resumed from an earlier push
    manifests_put: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "digest": self.digest,
            "uploaded": len(self.uploaded),
            "mounted": len(self.mounted),
            "skipped": len(self.skipped),
            "uploaded_bytes": self.uploaded_bytes,
            "skipped_bytes": self.skipped_bytes,
            "manifests_put": self.manifests_put,
        }


@dataclass
class PullReport:
    """What a pull moved: blobs fetched (bytes over the network, bytes resumed) and present."""

    source: str
    digest: str  # the image manifest stored locally
    named: str  # what the reference resolved to (an index, for a multi-arch tag)
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    fetched_bytes: int = 0
    resumed_bytes: int = 0


@dataclass(frozen=True)
class Remote:
    """A reference resolved: the digest it names and the manifests to store, base first."""

    ref: RegistryRef
    named: str
    chain: list[Manifest]

    @property
    def image(self) -> Manifest:
        return self.chain[-1]


# --- push ------------------------------------------------------------------------------------


def push(
    layout: Layout,
    digest: str,
    target: RegistryRef,
    registry: Registry,
    options: TransferOptions = TransferOptions(),
) -> PushReport:
    """Copy the stored manifest ``digest`` and its chain to ``target``; returns what moved.

    Works for any OCI manifest in the layout (an image, a signature): the caller holds the
    layout's shared lock so gc keeps the blobs until the push is done.
    """
    repository = target.repository
    if target.digest is not None and target.digest != digest:
        raise RecipeError(f"{target} names {target.digest}, but the image to push is {digest}")
    chain = _local_chain(layout, digest)
    report = PushReport(str(target), digest)
    wanted = _unique(d for _, obj in chain for d in _blobs_of(obj))
    hints = MountHints(layout, registry.host)
    arrived: set[str] = set()  # blobs the repository lacked: uploaded or mounted by this push

    def one(desc: Descriptor) -> None:
        path = layout.blob_path(desc.digest)
        if not path.is_file():
            raise StoreError(f"blob {desc.digest} is missing from the store; run `imagekit fsck`")
        meter = Meter(options.progress, "push", desc.digest[:19], desc.size)
        outcome, sent = upload.push_blob(
            layout, registry, repository, desc, hints.get(desc.digest), options.chunk_size, meter
        )
        getattr(report, outcome).append(desc.digest)
        if outcome != "skipped":
            arrived.add(desc.digest)
        report.uploaded_bytes += sent
        report.skipped_bytes += max(0, desc.size - sent)  # a chunk sent twice (a 401) counts once

    _parallel(one, wanted, options.parallel)
    for number, (manifest_digest, obj) in enumerate(chain, 1):
        body = layout.read_blob(manifest_digest)
        top = number == len(chain)
        reference = (target.tag or "latest") if top and not target.digest else manifest_digest
        # A registry takes a manifest only once it holds every blob the manifest names: if this
        # push had to bring one, the manifest is not there yet, and no HEAD need ask.
        new = any(d.digest in arrived for d in _blobs_of(obj))
        if new or registry.manifest_digest(repository, reference) != manifest_digest:
            registry.put_manifest(repository, reference, body, MEDIA_MANIFEST)
            report.manifests_put += 1
    hints.remember([d.digest for d in wanted], repository)
    options.progress(ProgressEvent("done", f"pushed {target}"))
    return report


def push_manifest(registry: Registry, target: RegistryRef, body: bytes, media_type: str) -> str:
    """Put a manifest whose blobs are already there under ``target``'s tag (a signature, an
    extra tag); returns its digest."""
    return registry.put_manifest(target.repository, target.reference, body, media_type)


def _local_chain(layout: Layout, digest: str) -> list[tuple[str, dict[str, Any]]]:
    """The manifest and the manifests its ``subject`` links name, base first."""
    chain: list[tuple[str, dict[str, Any]]] = []
    current: str | None = digest
    while current is not None:
        if len(chain) >= _MAX_CHAIN or any(current == d for d, _ in chain):
            raise StoreError(f"manifest {digest} has a subject chain that loops or never ends")
        obj = layout.manifest(current)
        chain.append((current, obj))
        subject = obj.get("subject")
        current = subject["digest"] if isinstance(subject, dict) else None
    return chain[::-1]


def _blobs_of(obj: dict[str, Any]) -> list[Descriptor]:
    """A manifest's config and layers (its subject is a manifest, copied on its own)."""
    return [Descriptor.from_json(d) for d in [obj["config"], *obj["layers"]]]


def _unique(descriptors: Iterable[Descriptor]) -> list[Descriptor]:
    found: dict[str, Descriptor] = {}
    for desc in descriptors:
        found.setdefault(desc.digest, desc)
    return list(found.values())


def _parallel(work: Callable[[_T], object], items: Sequence[_T], threads: int) -> None:
    """Run ``work`` on every item, ``threads`` at a time; the first failure is raised."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imagekit-transfer") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --- pull ------------------------------------------------------------------------------------


def resolve(registry: Registry, ref: RegistryRef, *, arch: str) -> Remote:
    """Fetch the manifest ``ref`` names (for an index, the one for ``arch``) and its chain."""
    top = registry.get_manifest(ref.repository, ref.reference)
    named = top.digest
    obj = top.json()
    if obj.get("mediaType", top.media_type) == MEDIA_INDEX:
        top = registry.get_manifest(ref.repository, _choose(obj, arch, ref))
        obj = top.json()
    chain = [top]
    while True:
        _check_manifest(chain[-1], obj, ref)
        subject = obj.get("subject")
        if not isinstance(subject, dict):
            break
        if len(chain) >= _MAX_CHAIN:
            raise VerificationError(f"{ref} has a subject chain longer than {_MAX_CHAIN}")
        base = str(subject["digest"])
        if registry.manifest_digest(ref.repository, base) is None:
            raise FetchError(
                f"{ref} was built on {base}, which {registry.host}/{ref.repository} does not "
                "hold: push the image with `imagekit push`, which sends its base too"
            )
        chain.append(registry.get_manifest(ref.repository, base))
        obj = chain[-1].json()
    return Remote(ref, named, chain[::-1])


def _choose(index: dict[str, Any], arch: str, ref: RegistryRef) -> str:
    """The digest of the index entry for ``arch`` (OCI names: amd64, arm64)."""
    wanted = oci_arch(arch)
    entries = index.get("manifests")
    found: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and platform.get("architecture") == wanted:
            found.append(str(Descriptor.from_json(entry).digest))
    if not found:
        offered = sorted(
            str(e.get("platform", {}).get("architecture"))
            for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, dict) and isinstance(e.get("platform"), dict)
        )
        raise FetchError(
            f"{ref} has no image for {wanted} (it has: {', '.join(offered) or 'none'}); "
            "pass --arch to choose one"
        )
    return found[0]


def _check_manifest(manifest: Manifest, obj: dict[str, Any], ref: RegistryRef) -> None:
    try:
        if obj.get("mediaType", MEDIA_MANIFEST) != MEDIA_MANIFEST:
            raise StoreError(f"media type {obj.get('mediaType')!r} is not an OCI image manifest")
        manifest_descriptors(obj)
    except StoreError as exc:
        raise VerificationError(f"{ref}: manifest {manifest.digest} is malformed: {exc}") from None


def fetch(
    layout: Layout,
    registry: Registry,
    remote: Remote,
    *,
    inspect: Inspect | None = None,
    options: TransferOptions = TransferOptions(),
) -> PullReport:
    """Bring the chain's missing blobs into ``tmp/`` verified, then commit them base first.

    Nothing enters ``blobs/`` until every blob has arrived with its digest and size, and each
    passed ``inspect``. The caller holds the layout's shared lock until it has tagged the image.
    """
    repository = remote.ref.repository
    objs = [(m, m.json()) for m in remote.chain]
    wanted = _unique(d for _, obj in objs for d in _blobs_of(obj))
    report = PullReport(str(remote.ref), remote.image.digest, remote.named)
    parts: dict[str, Partial] = {}

    def one(desc: Descriptor) -> None:
        meter = Meter(options.progress, "fetch", desc.digest[:19], desc.size)
        part = download.download(layout, registry, repository, desc, meter)
        if part is None:
            report.present.append(desc.digest)
            return
        parts[desc.digest] = part
        report.fetched.append(desc.digest)
        report.fetched_bytes += part.received
        report.resumed_bytes += part.adopted

    _parallel(one, [d for d in wanted if not layout.has_blob(d.digest)], options.parallel)
    try:
        for manifest, obj in objs:
            _commit(layout, obj, parts, inspect)
            layout.add_bytes(manifest.body, MEDIA_MANIFEST)
    except ImagekitError:
        for part in parts.values():  # a refused image: its other blobs are not worth resuming
            part.path.unlink(missing_ok=True)
        raise
    MountHints(layout, registry.host).remember([d.digest for d in wanted], repository)
    return report


def _commit(
    layout: Layout, obj: dict[str, Any], parts: dict[str, Partial], inspect: Inspect | None
) -> None:
    """Inspect and commit one manifest's fetched layers in order, then its config."""
    parent: Descriptor | None = None
    for desc in [*_blobs_of(obj)[1:], _blobs_of(obj)[0]]:
        part = parts.get(desc.digest)
        if part is not None:
            if inspect is not None:
                inspect(desc, part.path, parent)
            download.commit(layout, part, desc)
            del parts[desc.digest]
        if desc.media_type in DISK_FORMATS:
            parent = desc


def pull(
    layout: Layout,
    registry: Registry,
    ref: RegistryRef,
    *,
    arch: str,
    inspect: Inspect | None = None,
    options: TransferOptions = TransferOptions(),
) -> PullReport:
    """:func:`resolve` then :func:`fetch`, for callers with nothing to check in between."""
    remote = resolve(registry, ref, arch=arch)
    return fetch(layout, registry, remote, inspect=inspect, options=options)
