"""Signatures kept in the local store beside the images they sign, as cosign keeps them.

A signature manifest is tagged ``NAME:sha256-<hex>.sig`` in index.json, NAME being the signed
image's name and hex its manifest digest: skopeo and oras see ``oci:STORE:web:sha256-<hex>.sig``,
and a push maps it to ``REPO:sha256-<hex>.sig``, the tag cosign and podman look up. Signing again
with the same key replaces that key's signature; other keys' signatures stay (key rotation).
gc keeps a signature as long as the image it signs and drops it with the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    parse_payload,
    parse_signature_manifest,
    sign_payload,
    signature_manifest,
    verify_payload,
)
from imagekit.verify.keys import PrivateKey, PublicKey, fingerprint
from imagekit.verify.trust import TrustPolicy


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


def sign(
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
    ref = f"{name}:{signature_tag(descriptor.digest)}"
    payload = make_payload(reference or name, descriptor.digest)
    public = key.public_key()
    layer = SignatureLayer(
        layout.add_bytes(payload, MEDIA_SIMPLE_SIGNING),
        sign_payload(key, payload),
        fingerprint(public),
    )
    with layout.digest_lock(f"sign-{ref}"):  # read, add, write back: one signer at a time
        kept = [old for old in _layers(layout, ref) if not _made_by(layout, old, public)]
        config, manifest = signature_manifest([*kept, layer])
        layout.add_bytes(config, MEDIA_OCI_CONFIG)
        layout.tag(ref, layout.add_bytes(manifest, MEDIA_MANIFEST))
    return Signature(ref, descriptor.digest, layer.signer, reference or name)


def signatures(layout: Layout, digest: str, trust: TrustPolicy) -> list[Signature]:
    """Every stored signature of manifest ``digest``, each checked against ``trust``'s keys.

    The reference rule is not applied: a local image has no registry name to hold it to.
    """
    found = []
    for ref, _ in layout.refs():
        if ref.partition(":")[2] != signature_tag(digest):
            continue
        for layer in _layers(layout, ref):
            try:
                payload = layout.read_blob(layer.payload.digest)
                signer = trust.check(payload, layer.signature, digest, None, claimed=layer.signer)
            except (SignatureError, StoreError) as e:
                found.append(Signature(ref, digest, None, problem=str(e)))
                continue
            found.append(Signature(ref, digest, signer, parse_payload(payload).reference))
    return found


def _layers(layout: Layout, ref: str) -> list[SignatureLayer]:
    descriptor = dict(layout.refs()).get(ref)
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
