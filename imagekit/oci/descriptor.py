"""The OCI descriptor: how the index and manifests name a blob, checked when it is read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagekit.core.refs import DIGEST_RE
from imagekit.errors import StoreError

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
