"""Signatures kept in the local store beside the images they sign, as cosign keeps them.

A signature manifest is tagged ``NAME:sha256-<hex>.sig`` in index.json, NAME being the signed
image's name and hex its manifest digest: skopeo and oras see ``oci:STORE:web:sha256-<hex>.sig``,
and a push maps it to ``REPO:sha256-<hex>.sig``, the tag cosign and podman look up. Signing again
with the same key replaces that key's signature; other keys' signatures stay (key rotation).
gc keeps a signature as long as the image it signs and drops it with the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagekit.core.refs import parse_ref
from imagekit.errors import RecipeError, SignatureError, StoreError
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import (
    MEDIA_MANIFEST,
    MEDIA_OCI_CONFIG,
    MEDIA_SIMPLE_SIGNING,
    REF_ANNOTATION,
    signature_tag,
    signed_digest,
)
from imagekit.verify.cosign import (
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
class Signature:
    """A stored signature of manifest ``digest`` (its signature manifest is tagged ``ref``).

    ``signer`` is the fingerprint of the key it verified with (a trusted key; for a signature
    just made, the signing key), None when it did not verify, and then ``problem`` says why.
    ``reference`` is the docker-reference of a verified payload.
    """

    ref: str
    digest: str
    signer: str | None
    reference: str | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "signer": self.signer,
            "reference": self.reference,
            "problem": self.problem,
        }


def sign_ref(
    layout: Layout, ref: str, key: PrivateKey, reference: str | None, *, digest: str | None = None
) -> Signature:
    """Sign the stored image ``ref`` names; with ``digest``, only if it still names that one
    (a build signing what it tagged must not sign what another process tagged meanwhile)."""
    with layout.shared_lock():
        descriptor = layout.resolve(ref)
        if digest is not None and descriptor.digest != digest:
            raise StoreError(
                f"{ref} was re-tagged to {descriptor.digest} meanwhile, so {digest} was not "
                f"signed: check which image it should name, then `imagekit sign {ref}`"
            )
        return _sign(layout, descriptor, key, reference)


def _sign(
    layout: Layout, descriptor: Descriptor, key: PrivateKey, reference: str | None
) -> Signature:
    """Sign the tagged image ``descriptor`` names; the caller holds the store's shared lock.

    ``reference`` (default: the image's name) becomes the payload's docker-reference.
    """
    image_ref = descriptor.annotations.get(REF_ANNOTATION)
    if image_ref is None:
        raise StoreError(f"{descriptor.digest} is not tagged: tag it, then sign the tag")
    name, tag = str(parse_ref(image_ref)).split(":", 1)
    if signed_digest(tag) is not None:
        raise RecipeError(f"{image_ref} is a signature, not an image: sign the image itself")
    from imagekit.verify.keys import fingerprint

    payload = make_payload(reference or name, descriptor.digest)
    public = key.public_key()
    layer = SignatureLayer(
        layout.add_bytes(payload, MEDIA_SIMPLE_SIGNING),
        sign_payload(key, payload),
        fingerprint(public),
    )
    ref = attach(
        layout, name, descriptor.digest, [layer], replaces=lambda old: _made_by(layout, old, public)
    )
    return Signature(ref, descriptor.digest, layer.signer, reference or name)


def attach(
    layout: Layout,
    name: str,
    digest: str,
    layers: Sequence[SignatureLayer],
    *,
    replaces: Callable[[SignatureLayer], bool] = lambda old: False,
) -> str:
    """Add ``layers`` (their payloads already stored) to ``NAME:sha256-<hex>.sig``, dropping
    the stored layers ``replaces`` picks; returns that ref."""
    ref = f"{name}:{signature_tag(digest)}"
    with layout.digest_lock(f"sign-{ref}"):  # read, add, write back: one writer at a time
        old = _layers(layout, ref)
        merged = merge_layers([layer for layer in old if not replaces(layer)], layers)
        if merged != old:
            config, manifest = signature_manifest(merged)
            layout.add_bytes(config, MEDIA_OCI_CONFIG)
            layout.tag(ref, layout.add_bytes(manifest, MEDIA_MANIFEST))
    return ref


def stored_layers(layout: Layout, digest: str) -> list[SignatureLayer]:
    """Every stored signature of ``digest``, whatever image name it is kept under."""
    found: list[SignatureLayer] = []
    for ref in layout.ref_names():
        if ref.partition(":")[2] == signature_tag(digest):
            found = merge_layers(found, _layers(layout, ref))
    return found


def signatures(layout: Layout, digest: str, trust: TrustPolicy) -> list[Signature]:
    """Every stored signature of manifest ``digest``, each checked against ``trust``'s keys.

    The reference rule is not applied: a local image has no registry name to hold it to.
    """
    found = []
    for ref in layout.ref_names():
        if ref.partition(":")[2] != signature_tag(digest):
            continue
        try:
            layers = _layers(layout, ref)
        except (SignatureError, StoreError) as e:
            found.append(Signature(ref, digest, None, problem=str(e)))
            continue
        found.extend(_checked(layout, ref, digest, layer, trust) for layer in layers)
    return found


def _checked(
    layout: Layout, ref: str, digest: str, layer: SignatureLayer, trust: TrustPolicy
) -> Signature:
    try:
        payload = layout.read_blob(layer.payload.digest)
        signer = trust.check(payload, layer.signature, digest, None, claimed=layer.signer)
    except (SignatureError, StoreError) as e:
        return Signature(ref, digest, None, problem=str(e))
    return Signature(ref, digest, signer, parse_payload(payload).reference)


def _layers(layout: Layout, ref: str) -> list[SignatureLayer]:
    descriptor = layout.find_ref(ref)
    if descriptor is None:
        return []
    return parse_signature_manifest(layout.read_blob(descriptor.digest))


def _made_by(layout: Layout, layer: SignatureLayer, key: PublicKey) -> bool:
    """Whether ``key`` made ``layer`` (then a new signature by it replaces this one)."""
    try:
        payload = layout.read_blob(layer.payload.digest)
        return verify_payload(payload, layer.signature, [key]) is not None
    except (SignatureError, StoreError):
        return False  # damaged: not provably ours, so it is left for its owner to see
