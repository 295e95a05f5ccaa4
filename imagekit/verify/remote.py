"""Signatures in a registry, where cosign and podman look: a manifest at tag ``sha256-<hex>.sig``.

A pull reads them right after resolving the image's digest, before anything is stored, so a
pull that ``[trust] require`` covers is refused with nothing stored; accepted or not required,
they enter the local store with the image (:mod:`imagekit.verify.stored`). A push carries the
image's stored signatures up, merged with the ones the registry holds already: like cosign,
which appends a layer per signature, signing in two places loses neither signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagekit.core.digest import sha256_bytes
from imagekit.errors import FetchError, SignatureError, VerificationError
from imagekit.net.transport import Transport
from imagekit.oci import upload
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import (
    MEDIA_MANIFEST,
    MEDIA_OCI_CONFIG,
    MEDIA_SIMPLE_SIGNING,
    signature_tag,
)
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.oci.transfer import TransferOptions
from imagekit.oci.wire import fail, read_capped
from imagekit.progress import Meter, ProgressCallback, ignore_progress
from imagekit.verify import stored
from imagekit.verify.cosign import (
    PAYLOAD_MAX,
    SignatureLayer,
    make_payload,
    merge_layers,
    parse_payload,
    parse_signature_manifest,
    sign_payload,
    signature_manifest,
    verify_payload,
)
from imagekit.verify.trust import TrustPolicy

if TYPE_CHECKING:  # verify.keys imports cryptography: only signing loads it (cosign.py)
    from imagekit.verify.keys import PrivateKey, PublicKey


@dataclass(frozen=True)
class Signatures:
    """The signatures a registry holds for one manifest, with their payloads by digest."""

    layers: tuple[SignatureLayer, ...] = ()
    payloads: dict[str, bytes] = field(default_factory=dict)


def fetch(registry: Registry, repository: str, digest: str) -> Signatures:
    """What ``repository`` holds at ``sha256-<hex>.sig`` (nothing: no signatures)."""
    tag = signature_tag(digest)
    if registry.manifest_digest(repository, tag) is None:
        return Signatures()
    layers = parse_signature_manifest(registry.get_manifest(repository, tag).body)
    payloads = {layer.payload.digest: _payload(registry, repository, layer) for layer in layers}
    return Signatures(tuple(layers), payloads)


def signed_by(
    registry: Registry, repository: str, digest: str, public_keys: Sequence[PublicKey]
) -> str | None:
    """The fingerprint of a key in ``public_keys`` that signed manifest ``digest`` there, or
    None (unsigned, signed by others, or the signature is for another manifest)."""
    found = fetch(registry, repository, digest)
    for layer in found.layers:
        payload = found.payloads[layer.payload.digest]
        try:
            signer = verify_payload(payload, layer.signature, public_keys)
            if signer is not None and parse_payload(payload).digest == digest:
                return signer
        except SignatureError:
            continue
    return None


def check(
    registry: Registry, repository: str, digest: str, target: str, trust: TrustPolicy
) -> Signatures:
    """The signatures of ``digest``, checked when ``trust`` requires them for ``target``.

    Required: SignatureError unless one is acceptable (trust.py's rules). Not required: any
    trouble reading them only means there are none to keep.
    """
    if not trust.requires_signature(target):
        try:
            return fetch(registry, repository, digest)
        except (FetchError, VerificationError):
            return Signatures()
    found = fetch(registry, repository, digest)
    pairs = [(layer, found.payloads[layer.payload.digest]) for layer in found.layers]
    trust.check_layers(pairs, digest, target)
    return found


def push(
    layout: Layout,
    registry: Registry,
    repository: str,
    digest: str,
    layers: Sequence[SignatureLayer],
    *,
    replaces: Callable[[SignatureLayer, bytes], bool] = lambda layer, payload: False,
    progress: ProgressCallback = ignore_progress,
) -> int:
    """Add ``layers`` (their payloads are in ``layout``) to the registry's signatures of
    ``digest``, dropping the ones there that ``replaces(layer, payload)`` picks; returns how
    many signatures it did not have. The caller holds the layout's shared lock."""
    there = fetch(registry, repository, digest)
    kept = [lay for lay in there.layers if not replaces(lay, there.payloads[lay.payload.digest])]
    merged = merge_layers(kept, layers)
    if merged == list(there.layers):
        return 0
    config, manifest = signature_manifest(merged)
    config_descriptor = layout.add_bytes(config, MEDIA_OCI_CONFIG)  # gc sweeps it later
    new = [layer.payload for layer in merged[len(kept) :]]
    for desc in [*new, config_descriptor]:
        meter = Meter(progress, "push", desc.digest[:19], desc.size)
        upload.push_blob(layout, registry, repository, desc, None, PAYLOAD_MAX, meter)
    registry.put_manifest(repository, signature_tag(digest), manifest, MEDIA_MANIFEST)
    return len(merged) - len(kept)


def push_stored(
    layout: Layout, registry: Registry, repository: str, digest: str, options: TransferOptions
) -> int:
    """Carry the stored signatures of ``digest`` to ``repository`` (a push does this)."""
    layers = stored.stored_layers(layout, digest)
    if not layers:
        return 0
    return push(layout, registry, repository, digest, layers, progress=options.progress)


@dataclass(frozen=True)
class Target:
    """Where a registry image to sign is: ``oci://HOST/REPO:TAG`` (or ``@sha256:``)."""

    text: str
    insecure: bool = False
    transport: Transport | None = None


def sign_target(
    layout: Layout, target: Target, key: PrivateKey, reference: str | None
) -> stored.Signature:
    """Sign the image ``target`` names, in the registry, for docker-reference ``reference``
    (default ``HOST/REPO``, as cosign writes it: no tag, no digest)."""
    ref = RegistryRef.parse(target.text)
    registry = Registry(
        ref.host, transport=target.transport, insecure=target.insecure, repository=ref.repository
    )
    with layout.shared_lock():  # the staged payload must outlive the push
        digest = ref.digest or registry.manifest_digest(ref.repository, ref.reference)
        if digest is None:
            raise FetchError(f"no manifest {ref.reference} in {ref.host}/{ref.repository}")
        signed_as = reference or f"{ref.host}/{ref.repository}"
        layer = sign(layout, registry, ref, digest, key, signed_as)
    where = str(ref.but(tag=signature_tag(digest)))
    return stored.Signature(where, digest, layer.signer, signed_as)


def sign(
    layout: Layout, registry: Registry, ref: RegistryRef, digest: str, key: PrivateKey, as_: str
) -> SignatureLayer:
    """Sign manifest ``digest`` of ``ref``'s repository for docker-reference ``as_`` and put the
    signature there, replacing this key's earlier one; the payload is staged in ``layout``,
    whose gc sweeps it."""
    from imagekit.verify.keys import fingerprint

    payload = make_payload(as_, digest)
    public = key.public_key()
    staged = layout.add_bytes(payload, MEDIA_SIMPLE_SIGNING)
    layer = SignatureLayer(staged, sign_payload(key, payload), fingerprint(public))

    def ours(old: SignatureLayer, data: bytes) -> bool:
        try:
            return verify_payload(data, old.signature, [public]) is not None
        except SignatureError:
            return False

    push(layout, registry, ref.repository, digest, [layer], replaces=ours)
    return layer


def keep(layout: Layout, name: str, digest: str, found: Signatures) -> None:
    """Store pulled signatures beside the image (tag ``NAME:sha256-<hex>.sig``)."""
    if not found.layers:
        return
    for layer in found.layers:
        layout.add_bytes(found.payloads[layer.payload.digest], MEDIA_SIMPLE_SIGNING)
    stored.attach(layout, name, digest, found.layers)


def _payload(registry: Registry, repository: str, layer: SignatureLayer) -> bytes:
    desc: Descriptor = layer.payload
    url = registry.url(repository, "blobs", desc.digest)

    def once() -> bytes:
        with registry.open_blob(repository, desc.digest) as resp:
            if resp.status_code != 200:
                fail(resp, f"cannot get signature payload {desc.digest} from {registry.host}")
            return read_capped(resp, PAYLOAD_MAX, f"signature payload {desc.digest}")

    data = registry.retrying(url, once)
    if sha256_bytes(data) != desc.digest or len(data) != desc.size:
        raise SignatureError(
            f"signature payload {desc.digest} from {registry.host} is {len(data)} bytes hashing "
            f"to {sha256_bytes(data)}: the registry served other bytes; nothing was stored"
        )
    return data
