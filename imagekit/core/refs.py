"""Image names, tags, digests and ``name:tag`` refs, validated before they reach a path or a file.

Names become file names and index entries, so anything that could escape a directory or hide in
a listing (``/``, ``..``, NUL, newline, a leading ``-`` that reads as a flag) is refused here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagekit.errors import RecipeError

NAME_RE = r"[a-z0-9][a-z0-9._-]*"
TAG_RE = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
DIGEST_RE = r"sha256:[0-9a-f]{64}"
BLOB_NAME = re.compile(r"[0-9a-f]{64}")  # a blob's file name in blobs/sha256/
NAME_MAX = 128


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid image name, else raise RecipeError saying the rule."""
    if len(name) <= NAME_MAX and ".." not in name and re.fullmatch(NAME_RE, name):
        return name
    raise RecipeError(
        f"invalid image name {name!r}: use 1 to {NAME_MAX} lowercase letters, digits, '.', '_' "
        "or '-', starting with a letter or digit and without '..'"
    )


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise RecipeError saying the rule."""
    if re.fullmatch(TAG_RE, tag):
        return tag
    raise RecipeError(
        f"invalid tag {tag!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
        "not starting with '.' or '-'"
    )


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a full sha256 digest, else raise RecipeError."""
    if re.fullmatch(DIGEST_RE, digest):
        return digest
    raise RecipeError(
        f"invalid digest {digest!r}: expected 'sha256:' followed by 64 lowercase hex digits"
    )


@dataclass(frozen=True)
class Ref:
    """A validated ``name:tag`` pair; build it with :func:`parse_ref`."""

    name: str
    tag: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def parse_ref(text: str, default_tag: str = "latest") -> Ref:
    """Parse ``name`` or ``name:tag``; a bare name gets ``default_tag``."""
    name, sep, tag = text.partition(":")
    return Ref(validate_name(name), validate_tag(tag if sep else default_tag))
