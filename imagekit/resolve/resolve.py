"""Resolve: turn a recipe's version (``41``, ``latest``) into one concrete file to fetch.

Each upstream publishes what exists in its own format, so there is one small resolver per
format: Fedora's ``releases.json`` (``fedora-releases``), the checksum file of an images
directory (``checksum-listing``), Debian's image JSON (``debian-json``) and Ubuntu's
``SHA256SUMS`` (``ubuntu-sums``). Behind a mirror only the mirror is asked, because hosts that
use one often cannot reach upstream: Fedora then reads directory listings instead of
``releases.json``; the others read the same files from the mirror.

Resolution only chooses a file name. What the bytes must be still comes from the checksum file
and its signature (``imagekit.verify``); digests found in metadata are cross-checks.

Every small upstream file goes through :class:`UpstreamCache`: cached in the store with a TTL,
revalidated with conditional requests, and readable with no network at all (``offline``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagekit.core.digest import hash_file, identity
from imagekit.errors import RecipeError
from imagekit.net.metadata import UpstreamCache
from imagekit.recipe import HttpSource, Recipe
from imagekit.resolve.context import Candidate, Context, on_mirror
from imagekit.resolve.debian import resolve_debian
from imagekit.resolve.fedora import resolve_fedora
from imagekit.resolve.listing import resolve_checksum_listing
from imagekit.resolve.ubuntu import resolve_ubuntu

# One resolver per upstream format, under the name a recipe's [resolve] table gives.
__all__ = ["RESOLVERS", "Resolution", "Target", "on_mirror", "resolve"]

RESOLVERS: dict[str, Callable[[Context], tuple[str, Candidate]]] = {
    "fedora-releases": resolve_fedora,
    "checksum-listing": resolve_checksum_listing,
    "debian-json": resolve_debian,
    "ubuntu-sums": resolve_ubuntu,
}


@dataclass(frozen=True)
class Resolution:
    """How a version became a file: recorded in provenance so a pull can be repeated."""

    resolver: str
    release: str
    compose: str
    filename: str
    digests: Mapping[str, str]  # from metadata: cross-checks, never evidence
    metadata: tuple[str, ...]  # the URLs read, as fetched

    def record(self) -> dict[str, Any]:
        return {
            "resolver": self.resolver,
            "release": self.release,
            "compose": self.compose,
            "filename": self.filename,
            "digests": dict(self.digests),
            "metadata": list(self.metadata),
        }


@dataclass(frozen=True)
class Target:
    """What one pull fetches: a concrete source, how it was found, and the ref's identity."""

    source: HttpSource  # URLs in upstream form (``--mirror`` is applied when fetching)
    resolution: Resolution | None
    keys_override: tuple[Path, ...]
    identity: str  # what the ref is annotated with; equal identity, equal image


def resolve(
    recipe: Recipe,
    *,
    cache: UpstreamCache,
    mirror: str | None = None,
    keys_override: Sequence[Path] = (),
) -> Target:
    """The concrete file ``recipe`` stands for; a recipe without ``[resolve]`` is already one.

    ``keys_override`` replaces the recipe's pinned keys (tests that re-sign upstream files, a
    site that re-signs its mirror). It is the caller's explicit choice, never read from the
    environment, and it is part of the identity and recorded in provenance.
    """
    source = recipe.source
    if not isinstance(source, HttpSource):
        raise RecipeError(f"{recipe.name}: source kind {source.kind!r} is not downloaded")
    override = tuple(keys_override) if source.keys or source.release_keys else ()
    for path in override:
        if not path.is_file():
            raise RecipeError(f"key override: key file {path} does not exist")
    resolution = None
    if source.resolve is not None:
        context = Context(recipe, source, source.resolve, cache, mirror)
        release, candidate = RESOLVERS[source.resolve.resolver](context)
        source = context.concrete(release, candidate)
        resolution = Resolution(
            resolver=context.spec.resolver,
            release=release,
            compose=candidate.compose,
            filename=candidate.filename,
            digests=candidate.digests,
            metadata=tuple(context.consulted),
        )
    if override:
        source = replace(source, keys=override, fingerprints=())
    if resolution is None and not override:
        return Target(source, None, (), recipe.digest)
    ref_identity = identity(
        {
            "recipe": recipe.digest,
            "url": source.url,
            "checksum_url": source.checksum_url,
            "signature_url": source.signature_url,
            "filename": source.filename,
            "digests": dict(resolution.digests) if resolution else {},
            "keys_override": [hash_file(path)["sha256"] for path in override],
        }
    )
    return Target(source, resolution, override, ref_identity)
