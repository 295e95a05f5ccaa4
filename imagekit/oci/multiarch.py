"""One tag for several architectures: an OCI image index with one manifest per platform.

A push of several stored images (one per architecture) copies each image by digest, with its
chain, exactly as a single push does, then puts an index naming them under the tag. Pulls pick
the host's entry (:func:`imagekit.oci.transfer.resolve`); signing the tag signs the index's
digest, as cosign does. The local store does not keep the index: the images are its content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from imagekit.errors import RecipeError
from imagekit.oci.layout import Layout
from imagekit.oci.media import MEDIA_INDEX, MEDIA_MANIFEST, oci_arch
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.oci.transfer import PushReport, TransferOptions, push
from imagekit.progress import ProgressEvent

# Disk images carry no OS in their provenance; every image imagekit makes boots Linux.
PLATFORM_OS = "linux"


@dataclass(frozen=True)
class IndexEntry:
    """One image of an index: its manifest digest and size, and the architecture it is for."""

    ref: str  # the local ref it was pushed from, for reports
    digest: str
    size: int
    arch: str  # OCI's name (amd64, arm64)


@dataclass
class IndexPushReport:
    """What a multi-arch push did: the index it put and each image's own push report."""

    target: str
    digest: str  # the index
    images: list[tuple[IndexEntry, PushReport]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "digest": self.digest,
            "media_type": MEDIA_INDEX,
            "manifests": [
                {"ref": entry.ref, "architecture": entry.arch, **report.to_json()}
                for entry, report in self.images
            ],
        }


def index_body(entries: Sequence[IndexEntry]) -> bytes:
    """The index's bytes: one entry per image, ``platform`` in OCI's names."""
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.arch in seen:
            raise RecipeError(
                f"{seen[entry.arch]} and {entry.ref} are both for {entry.arch}: an index holds "
                "one image per architecture"
            )
        seen[entry.arch] = entry.ref
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": entry.digest,
                "size": entry.size,
                "platform": {"architecture": entry.arch, "os": PLATFORM_OS},
            }
            for entry in entries
        ],
    }
    return json.dumps(index, indent=2).encode() + b"\n"


def push_index(
    layout: Layout,
    entries: Sequence[IndexEntry],
    target: RegistryRef,
    registry: Registry,
    options: TransferOptions,
) -> IndexPushReport:
    """Push every entry's image by digest, then the index under ``target``'s tag.

    The caller holds the layout's shared lock, as for :func:`imagekit.oci.transfer.push`.
    """
    if target.tag is None or target.digest is not None:
        raise RecipeError(
            f"{target}: a multi-arch push needs a tag to put the index under "
            "(oci://HOST/REPO:TAG), not a digest"
        )
    body = index_body(entries)  # refuses two images for one architecture before any upload
    report = IndexPushReport(str(target), "")
    for entry in entries:
        by_digest = target.but(digest=entry.digest)
        report.images.append((entry, push(layout, entry.digest, by_digest, registry, options)))
    report.digest = registry.put_manifest(target.repository, target.tag, body, MEDIA_INDEX)
    options.progress(ProgressEvent("done", f"pushed {target} ({len(entries)} architectures)"))
    return report


def entry_arch(ref: str, recorded: str | None, given: str | None) -> str:
    """The OCI architecture of an image: the one given, which must agree with its provenance."""
    if given is not None and recorded is not None and oci_arch(given) != oci_arch(recorded):
        raise RecipeError(
            f"{ref} was made for {recorded}, not {given}: drop '={given}' or push another image"
        )
    arch = given or recorded
    if arch is None:
        raise RecipeError(
            f"{ref} records no architecture (an imported file): write {ref}=ARCH "
            "(amd64, arm64, ...) to say which it is for"
        )
    return oci_arch(arch)
