"""cosign's key-based signatures ("simple signing"), written byte for byte as cosign writes them.

A signature says "key K vouches that image R is manifest D". The payload is a small JSON
document naming R (``critical.identity.docker-reference``) and D
(``critical.image.docker-manifest-digest``); the signature is ECDSA P-256 over the SHA-256 of
the payload's bytes, DER, base64 in the annotation ``dev.cosignproject.cosign/signature`` of the
layer that is the payload. One manifest holds a layer per signature and is stored at tag
``sha256-<hex>.sig`` beside the image (docs/signing.md). JSON is written as Go's encoding/json
does (cosign and go-containerregistry are Go): compact, fields in struct order, map keys sorted,
``<``, ``>``, ``&`` escaped.

Nothing in a payload is believed before its signature verifies with a trusted key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagekit.core.digest import sha256_bytes
from imagekit.errors import SignatureError, StoreError
from imagekit.oci.descriptor import Descriptor
from imagekit.oci.media import (
    COSIGN_SIGNATURE_ANNOTATION,
    MEDIA_MANIFEST,
    MEDIA_OCI_CONFIG,
    MEDIA_SIMPLE_SIGNING,
    SIGNER_ANNOTATION,
)

# cryptography (through verify.keys) is imported by the functions that sign or check: a pull
# reads and keeps signatures without believing them, and must not pay its import.
if TYPE_CHECKING:
    from imagekit.verify.keys import PrivateKey, PublicKey

SIGNATURE_TYPE = "cosign container image signature"
PAYLOAD_MAX = 1 << 20  # cosign's payloads are a few hundred bytes; a bigger "payload" is hostile
SIGNATURES_MAX = 64  # per manifest: key rotation needs a few, not a registry's worth of downloads
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028"}
_GO_ESCAPES["\u2029"] = "\\u2029"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as go-containerregistry writes it


@dataclass(frozen=True)
class Claim:
    """What a verified payload says: which image (reference) is which manifest (digest)."""

    reference: str
    digest: str
    optional: Any  # cosign's free-form annotations (-a key=value), None when there are none


@dataclass(frozen=True)
class SignatureLayer:
    """One signature of a signature manifest: the payload blob and the base64 signature.

    ``signer`` is the fingerprint the layer says made it (imagekit writes it, cosign does not):
    it only words an error, it is never believed.
    """

    payload: Descriptor
    signature: str
    signer: str | None = None

    def to_go(self) -> dict[str, Any]:
        annotations = {COSIGN_SIGNATURE_ANNOTATION: self.signature}
        if self.signer is not None:
            annotations[SIGNER_ANNOTATION] = self.signer
        return {**_go_descriptor(self.payload), "annotations": dict(sorted(annotations.items()))}


def go_json(obj: Any) -> bytes:
    """``obj`` as Go's json.Marshal writes it; dicts must already be in Go's field order.

    The escaped characters can only occur inside strings, so replacing them is exact.
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for char, escape in _GO_ESCAPES.items():
        text = text.replace(char, escape)
    return text.encode()


def make_payload(
    reference: str, manifest_digest: str, optional: Mapping[str, str] | None = None
) -> bytes:
    """The simple-signing payload cosign signs for ``reference`` at ``manifest_digest``."""
    return go_json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": manifest_digest},
                "type": SIGNATURE_TYPE,
            },
            "optional": dict(sorted(optional.items())) if optional else None,
        }
    )


def sign_payload(key: PrivateKey, payload: bytes) -> str:
    """The base64 DER ECDSA signature over SHA-256 of ``payload`` (cosign's annotation value)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def verify_payload(payload: bytes, signature: str, public_keys: Sequence[PublicKey]) -> str | None:
    """The fingerprint of the key in ``public_keys`` that made ``signature``, or None.

    SignatureError when ``signature`` is not base64 of a DER ECDSA signature: it was damaged.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from imagekit.verify.keys import fingerprint

    try:
        der = base64.b64decode(signature.encode("ascii"), validate=True)
        decode_dss_signature(der)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise SignatureError(
            "a signature is not base64 of a DER ECDSA signature: it was damaged or is not "
            "cosign's; sign the image again"
        ) from None
    for key in public_keys:
        try:
            key.verify(der, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return fingerprint(key)
    return None


def parse_payload(payload: bytes) -> Claim:
    """The claim of a (verified) payload; SignatureError unless it is cosign's simple signing."""
    try:
        obj = json.loads(payload)
        critical = obj["critical"]
        reference = critical["identity"]["docker-reference"]
        digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, TypeError, KeyError):
        raise SignatureError("a signed payload is not a cosign simple-signing payload") from None
    if kind != SIGNATURE_TYPE:
        raise SignatureError(f"a signed payload has type {kind!r}, not {SIGNATURE_TYPE!r}")
    if not isinstance(reference, str) or not isinstance(digest, str):
        raise SignatureError("a signed payload names no reference or digest as a string")
    return Claim(reference, digest, obj.get("optional"))


def signature_manifest(layers: Sequence[SignatureLayer]) -> tuple[bytes, bytes]:
    """The config blob and the manifest of a signature artifact holding ``layers``.

    As cosign (go-containerregistry's empty image plus one appended layer per signature): an OCI
    image config whose rootfs lists each payload's digest, with Go's zero times.
    """
    config = go_json(
        {
            "architecture": "",
            "created": _ZERO_TIME,
            "history": [{"created": _ZERO_TIME} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer.payload.digest for layer in layers]},
            "config": {},
        }
    )
    config_descriptor = Descriptor(MEDIA_OCI_CONFIG, sha256_bytes(config), len(config))
    manifest = go_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _go_descriptor(config_descriptor),
            "layers": [layer.to_go() for layer in layers],
        }
    )
    return config, manifest


def merge_layers(
    first: Sequence[SignatureLayer], second: Sequence[SignatureLayer]
) -> list[SignatureLayer]:
    """``first``, then what ``second`` adds: the same signature of the same payload is one."""
    merged = list(first)
    seen = {(layer.payload.digest, layer.signature) for layer in merged}
    for layer in second:
        if (layer.payload.digest, layer.signature) not in seen:
            seen.add((layer.payload.digest, layer.signature))
            merged.append(layer)
    return merged


def parse_signature_manifest(data: bytes) -> list[SignatureLayer]:
    """The signatures a signature manifest holds (layers of other types are not signatures).

    SignatureError when it is not an OCI manifest or a payload is implausibly large.
    """
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
            raise StoreError("not an OCI manifest with schemaVersion 2")
        if obj.get("mediaType", MEDIA_MANIFEST) != MEDIA_MANIFEST or not isinstance(
            obj.get("layers"), list
        ):
            raise StoreError("not an OCI image manifest with layers")
        descriptors = [Descriptor.from_json(layer) for layer in obj["layers"]]
    except (ValueError, StoreError) as e:
        raise SignatureError(f"a signature manifest is malformed ({e}); sign again") from None
    if len(descriptors) > SIGNATURES_MAX:
        raise SignatureError(
            f"a signature manifest holds {len(descriptors)} layers, more than {SIGNATURES_MAX}: "
            "it is not a signature manifest worth reading"
        )
    found = []
    for layer in descriptors:
        signature = layer.annotations.get(COSIGN_SIGNATURE_ANNOTATION)
        if layer.media_type != MEDIA_SIMPLE_SIGNING or signature is None:
            continue
        if layer.size > PAYLOAD_MAX:
            raise SignatureError(
                f"a signature payload claims {layer.size} bytes, more than {PAYLOAD_MAX}: "
                "it is not a cosign payload"
            )
        payload = Descriptor(layer.media_type, layer.digest, layer.size)
        found.append(SignatureLayer(payload, signature, layer.annotations.get(SIGNER_ANNOTATION)))
    return found


def _go_descriptor(descriptor: Descriptor) -> dict[str, Any]:
    """go-containerregistry's v1.Descriptor field order: mediaType, size, digest."""
    return {
        "mediaType": descriptor.media_type,
        "size": descriptor.size,
        "digest": descriptor.digest,
    }
