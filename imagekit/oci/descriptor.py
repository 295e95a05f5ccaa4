"""The OCI descriptor: how the index and manifests name a blob, checked when it is read; the
descriptors a manifest names, and the annotations a disk layer carries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imagekit.core.digest import hexpart
from imagekit.core.refs import DIGEST_RE
from imagekit.errors import StoreError
from imagekit.oci.media import (
    DISK_FORMATS,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    PARENT_ANNOTATION,
    TITLE_ANNOTATION,
)

_DIGEST = re.compile(DIGEST_RE)


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor: what a blob is, its digest and size, plus annotations."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A private copy, so a caller mutating its dict cannot change a stored descriptor.
        object.__setattr__(self, "annotations", dict(self.annotations))

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        """Parse an OCI descriptor; StoreError if any field has the wrong type or form."""
        if not isinstance(obj, dict):
            raise StoreError(f"malformed descriptor {obj!r}: expected a JSON object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        annotations = obj.get("annotations", {})
        if not isinstance(media_type, str) or not media_type:
            raise StoreError(f"malformed descriptor {obj!r}: mediaType must be a string")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise StoreError(f"malformed descriptor {obj!r}: digest must be sha256:<64 hex>")
        if type(size) is not int or size < 0:  # bool is an int subclass: refused too
            raise StoreError(f"malformed descriptor {obj!r}: size must be a non-negative integer")
        if not isinstance(annotations, dict) or not all(
            type(k) is str and type(v) is str for k, v in annotations.items()
        ):
            raise StoreError(f"malformed descriptor {obj!r}: annotations must map str to str")
        return cls(media_type, digest, size, annotations)


def check_digest(digest: str) -> str:
    if not re.fullmatch(DIGEST_RE, digest):
        raise StoreError(f"malformed digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


def manifest_descriptors(obj: Any) -> list[Descriptor]:
    """The descriptors a manifest (or nested index) references; StoreError if malformed."""
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        raise StoreError("not an OCI manifest with schemaVersion 2")
    if obj.get("mediaType") == MEDIA_INDEX:
        items = obj.get("manifests")
    else:
        if obj.get("mediaType", MEDIA_MANIFEST) != MEDIA_MANIFEST:
            raise StoreError(f"unexpected mediaType {obj.get('mediaType')!r}")
        items = obj.get("layers")
        if not isinstance(items, list):
            raise StoreError("'layers' is not a list")
        items = [obj.get("config"), *items, *([obj["subject"]] if "subject" in obj else [])]
    if not isinstance(items, list):
        raise StoreError("'manifests' is not a list")
    annotations = obj.get("annotations", {})
    if not isinstance(annotations, dict):
        raise StoreError("'annotations' is not an object")
    return [Descriptor.from_json(item) for item in items]


def parents(descriptors: Iterable[Descriptor]) -> list[str]:
    """The parent digests named by overlay layers; StoreError if one is malformed."""
    return [
        check_digest(d.annotations[PARENT_ANNOTATION])
        for d in descriptors
        if PARENT_ANNOTATION in d.annotations
    ]


def layer_annotations(
    media_type: str, digest: str, annotations: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A disk layer gets a file name for tools that save layers as files (oras, skopeo): its
    blob's hex, the name an overlay's header gives its parent, so saved layers still chain."""
    found = dict(annotations or {})
    if media_type in DISK_FORMATS:
        found.setdefault(TITLE_ANNOTATION, hexpart(digest))
    return found
