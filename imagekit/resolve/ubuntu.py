"""Ubuntu: the release directory's ``SHA256SUMS``; the serial comes from its changelog line."""

from __future__ import annotations

from imagekit.errors import RecipeError
from imagekit.recipe import fill_pattern, version_key
from imagekit.resolve.context import Candidate, Context, checksum_entries


def resolve_ubuntu(context: Context) -> tuple[str, Candidate]:
    """The release directory's SHA256SUMS; the serial comes from its image changelog line."""
    release = context.pick_release(context.spec.releases)
    values = context.values(release)
    url, data = context.fetch(context.spec.metadata_url, values)
    entries = checksum_entries(data, url)
    serial = fill_pattern(context.spec.compose, values)
    serials = [m["compose"] for e in entries if (m := serial.fullmatch(e.filename))]
    if not serials:
        raise RecipeError(
            f"{url} names no release serial matching {context.spec.compose!r}; update the recipe"
        )
    compose = max(serials, key=version_key)
    match = context.matcher(release)
    found = [
        Candidate(e.filename, compose, {e.algorithm: e.digest})
        for e in entries
        if match(e.filename) is not None
    ]
    return release, context.choose(release, found, url)
