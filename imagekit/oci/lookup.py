"""Finding a stored manifest by what a person types: ``name:tag``, ``name``, a digest or a prefix.

A bare name means its only tag, else ``name:latest``; a digest prefix of 12+ hex digits must
match one image. A miss is answered with the refs close to what was typed, so a typo is one
look away from its fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Protocol

from imagekit.core.refs import parse_ref
from imagekit.errors import RecipeError, RefNotFoundError
from imagekit.oci.descriptor import Descriptor
from imagekit.oci.media import MEDIA_MANIFEST, REF_ANNOTATION, signed_digest

_HEX_PREFIX = re.compile(r"[0-9a-f]{12,64}")


class Index(Protocol):
    """What a lookup reads of the store: :class:`imagekit.oci.layout.Layout` is one."""

    @property
    def root(self) -> Path: ...

    def find_ref(self, ref: str) -> Descriptor | None: ...

    def ref_names(self) -> list[str]: ...

    def entries(self) -> list[Descriptor]: ...

    def has_blob(self, digest: str) -> bool: ...

    def blob_path(self, digest: str) -> Path: ...

    def manifest(self, digest: str) -> dict[str, Any]: ...


def resolve(index: Index, text: str) -> Descriptor:
    """The manifest ``text`` names; RefNotFoundError (with close matches) if there is none."""
    if text.startswith("sha256:"):
        hexpart = text.removeprefix("sha256:")
        if not _HEX_PREFIX.fullmatch(hexpart):
            raise RecipeError(
                f"invalid digest {text!r}: expected 'sha256:' followed by 12 to 64 "
                "lowercase hex digits"
            )
        return _by_digest(index, hexpart)
    ref = parse_ref(text)
    found = index.find_ref(str(ref))
    if ":" in text:
        if found is not None:
            return found
        raise not_found(index, str(ref))
    # A bare name means the image's tag: its signature tags (NAME:sha256-<hex>.sig) do not count.
    same_name = [
        r
        for r in index.ref_names()
        if r.partition(":")[0] == ref.name and not signed_digest(r.split(":")[1])
    ]
    only = index.find_ref(same_name[0]) if len(same_name) == 1 else None
    if only is not None:
        return only
    if found is not None:
        return found
    if same_name:
        raise RefNotFoundError(
            f"{text!r} is ambiguous: it has tags {', '.join(same_name)} and none is "
            f"'latest'; name one, e.g. {same_name[0]!r}"
        )
    if _HEX_PREFIX.fullmatch(text):
        return _by_digest(index, text)
    raise not_found(index, text)


def not_found(index: Index, wanted: str) -> RefNotFoundError:
    """The error for a missing ref, naming the refs close to it (or what the store has)."""
    refs = index.ref_names()
    if not refs:
        return RefNotFoundError(
            f"no image {wanted!r}: the store at {index.root} is empty; pull one first"
        )
    name = wanted.partition(":")[0]
    close = [r for r in refs if name in r] + difflib.get_close_matches(wanted, refs, 5, 0.5)
    shown = list(dict.fromkeys(close))[:10]
    if shown:
        return RefNotFoundError(f"no image {wanted!r}; close matches: {', '.join(shown)}")
    more = f" and {len(refs) - 10} more" if len(refs) > 10 else ""
    return RefNotFoundError(f"no image {wanted!r}; the store has: {', '.join(refs[:10])}{more}")


def _by_digest(index: Index, hexpart: str) -> Descriptor:
    """The one manifest whose digest starts with ``hexpart``, tagged or (if whole) untagged."""
    entries = sorted(index.entries(), key=lambda d: d.annotations.get(REF_ANNOTATION, ""))
    digests = sorted({d.digest for d in entries if d.digest[7:].startswith(hexpart)})
    if len(digests) == 1:
        return next(d for d in entries if d.digest == digests[0])
    if digests:
        raise RefNotFoundError(
            f"digest prefix {hexpart!r} matches {len(digests)} images "
            f"({', '.join(d[:19] for d in digests)}); type more of the digest"
        )
    digest = "sha256:" + hexpart
    if len(hexpart) == 64 and index.has_blob(digest):
        index.manifest(digest)  # untagged but present, e.g. kept by the build cache
        return Descriptor(MEDIA_MANIFEST, digest, index.blob_path(digest).stat().st_size)
    raise RefNotFoundError(
        f"no image with digest {'sha256:' + hexpart!r} in {index.root}; "
        "check the digest, or pull the image first"
    )
