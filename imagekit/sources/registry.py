"""Images from an OCI registry (``oci://HOST/REPO:TAG``): pulled by digest, inspected as untrusted.

The registry is a transport, not an authority: every blob is checked against the digest the
manifest names, every disk layer's header is inspected before any qemu tool could open it (a
qcow2 layer may name as backing file only its parent layer, by blob name), and the config and
evidence blobs come along unchanged, so ``imagekit inspect`` still shows where the base came
from and who signed its checksum. The image's cosign signatures are read as soon as the manifest
digest is known: when the trust policy requires one for this pull, a refusal leaves nothing
stored; otherwise they are kept beside the image (:mod:`imagekit.verify.remote`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from imagekit import catalog
from imagekit.core.digest import hexpart, identity
from imagekit.core.refs import parse_ref
from imagekit.disk import header
from imagekit.errors import RecipeError, UnsafeImageError
from imagekit.image import Image
from imagekit.net.transport import Transport
from imagekit.oci import transfer
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import ARTIFACT_TYPE, DISK_FORMATS, MEDIA_CONFIG, MEDIA_MANIFEST
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.oci.transfer import PullReport, Remote, TransferOptions
from imagekit.progress import ProgressEvent
from imagekit.recipe import host_arch
from imagekit.verify import remote as signatures
from imagekit.verify.trust import TrustPolicy


@dataclass(frozen=True)
class RegistryPull:
    """What :func:`pull` asks for beyond the reference: how to reach the registry, what to check."""

    tag: str | None = None  # the local ref; default REPO's last component + ":" + TAG
    arch: str | None = None  # for a multi-arch tag; default the host's
    insecure: bool = False  # plain http to a registry that is not on loopback
    transport: Transport | None = None
    trust: TrustPolicy = field(default_factory=TrustPolicy)  # whose signatures count, where
    options: TransferOptions = field(default_factory=TransferOptions)


@dataclass(frozen=True)
class Pulled:
    image: Image
    report: PullReport


def local_ref(ref: RegistryRef) -> str:
    """``web:1`` for ``oci://host/images/web:1``; a digest pull is tagged ``sha256-<12 hex>``."""
    name = ref.repository.rsplit("/", 1)[-1]
    tag = ref.tag or (f"sha256-{hexpart(ref.digest)[:12]}" if ref.digest else "latest")
    return str(parse_ref(f"{name}:{tag}"))


def pull(layout: Layout, text: str, request: RegistryPull) -> Pulled:
    """Fetch the image ``text`` names, check and inspect it, store it and tag it locally."""
    ref = RegistryRef.parse(text)
    local = str(parse_ref(request.tag)) if request.tag else local_ref(ref)
    registry = Registry(
        ref.host,
        transport=request.transport,
        insecure=request.insecure,
        repository=ref.repository,
    )
    progress = request.options.progress
    with layout.shared_lock():
        progress(ProgressEvent("resolve", f"reading {ref}"))
        remote = transfer.resolve(registry, ref, arch=request.arch or host_arch())
        progress(ProgressEvent("verify", f"reading the signatures of {remote.named[:19]}"))
        signed = signatures.check(registry, ref.repository, remote.named, str(ref), request.trust)
        _require_image(remote)
        report = transfer.fetch(
            layout, registry, remote, inspect=_inspector(layout), options=request.options
        )
        manifest = Descriptor(MEDIA_MANIFEST, remote.image.digest, len(remote.image.body))
        key = identity({"oci": remote.image.digest})
        image = catalog.tag(layout, local, key, manifest, progress)
        if remote.named == remote.image.digest:  # an index's signatures sign no stored manifest
            signatures.keep(layout, parse_ref(local).name, remote.named, signed)
    return Pulled(replace(image, cached=not report.fetched), report)


def _require_image(remote: Remote) -> None:
    """Refuse what is not an imagekit disk image before downloading any layer of it."""
    obj = remote.image.json()
    config = obj["config"]  # a valid descriptor: resolve() checked the manifest
    disks = [d for d in obj.get("layers", []) if d.get("mediaType") in DISK_FORMATS]
    if obj.get("artifactType") != ARTIFACT_TYPE and config.get("mediaType") != MEDIA_CONFIG:
        raise RecipeError(
            f"{remote.ref} is not an imagekit image (config type {config.get('mediaType')!r}); "
            "imagekit pulls disk images pushed with `imagekit push`"
        )
    if not disks:
        raise RecipeError(f"{remote.ref} has no disk layer: it is not a disk image")


def _inspector(layout: Layout) -> transfer.Inspect:
    """Check each downloaded disk layer's header before it may enter the store."""

    def inspect(desc: Descriptor, path: Path, parent: Descriptor | None) -> None:
        fmt = DISK_FORMATS.get(desc.media_type)
        if fmt is None:
            return  # config and evidence: data, never opened by qemu
        found = header.ensure_safe(
            path, fmt, allowed_backing_dir=layout.blobs_dir if parent else None
        )
        if parent is None:
            return
        expected = hexpart(parent.digest)
        if (
            found.backing_file != expected
            or found.backing_format != DISK_FORMATS[parent.media_type]
        ):
            raise UnsafeImageError(
                f"refusing layer {desc.digest}: its backing file is {found.backing_file!r} "
                f"({found.backing_format}), not its parent layer {expected} "
                f"({DISK_FORMATS[parent.media_type]}); a layer may build only on the one below it"
            )

    return inspect
