"""Refs that remember what made them: tagging an image with its identity, and cache hits.

A ref's index entry is annotated with the identity of what made it (recipe digest, resolved
file, layers). A later pull or build of the same identity finds the ref, checks that every blob
is still present, and returns it without doing any work.
"""

from __future__ import annotations

from imagekit.errors import StoreError
from imagekit.image import Image
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import IDENTITY_ANNOTATION
from imagekit.progress import ProgressCallback, ProgressEvent


def find(layout: Layout, ref: str, identity: str) -> Image | None:
    """The image ``ref`` names, if it was made from this very identity and is complete."""
    try:
        descriptor = layout.resolve(ref)
    except StoreError:
        return None
    if descriptor.annotations.get(IDENTITY_ANNOTATION) != identity:
        return None
    try:
        image = Image.from_descriptor(layout, descriptor, cached=True)
    except (StoreError, OSError, ValueError, KeyError):
        return None
    layers = image.manifest.get("layers", [])
    if all(layout.has_blob(layer["digest"]) for layer in layers):
        return image
    return None


def tag(
    layout: Layout, ref: str, identity: str, manifest: Descriptor, progress: ProgressCallback
) -> Image:
    """Point ``ref`` at ``manifest``, annotated with what made it (:func:`find` reads it)."""
    layout.tag(
        ref,
        Descriptor(
            manifest.media_type, manifest.digest, manifest.size, {IDENTITY_ANNOTATION: identity}
        ),
    )
    progress(ProgressEvent("done", f"{ref} stored"))
    return Image.load(layout, ref)
