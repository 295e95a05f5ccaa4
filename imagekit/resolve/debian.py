"""Debian's ``<release>-<vendor>-<arch>.json``: one Upload item per published file."""

from __future__ import annotations

import base64
import binascii
import hashlib

from imagekit.errors import ChecksumError
from imagekit.resolve.context import Candidate, Context, field_of, parse_json


def resolve_debian(context: Context) -> tuple[str, Candidate]:
    """Debian's ``<release>-<vendor>-<arch>.json``: one Upload item per published file."""
    release = context.pick_release(context.spec.releases)
    url, data = context.fetch(context.spec.metadata_url, context.values(release))
    document = parse_json(data, url)
    items = field_of(document, "items") if isinstance(document, dict) else []
    match = context.matcher(release)
    found = []
    for item in items if isinstance(items, list) else []:
        if field_of(item, "kind") != "Upload":
            continue
        filename = str(field_of(field_of(item, "data"), "ref")).rsplit("/", 1)[-1]
        compose = match(filename)
        if compose is not None:
            annotations = field_of(field_of(item, "metadata"), "annotations")
            digest = str(field_of(annotations, "cloud.debian.org/digest"))
            found.append(Candidate(filename, compose, _debian_digest(digest, url)))
    return release, context.choose(release, found, url)


def _debian_digest(text: str, url: str) -> dict[str, str]:
    """``sha512:<unpadded base64>`` as Debian writes it, in hex."""
    algorithm, _, encoded = text.partition(":")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raw = b""
    if algorithm not in ("sha256", "sha512") or len(raw) != hashlib.new(algorithm).digest_size:
        raise ChecksumError(f"{url}: malformed digest {text!r} in the image metadata")
    return {algorithm: raw.hex()}
