"""What every resolver shares: the recipe being resolved, where to ask, and what was read.

A resolver is a function ``Context -> (release, Candidate)``; :mod:`imagekit.resolve.resolve`
registers one per upstream format under the name recipes use in ``[resolve] resolver``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from imagekit.errors import ChecksumError, FetchError, RecipeError
from imagekit.net.metadata import UpstreamCache
from imagekit.recipe import HttpSource, Recipe, ResolveSpec, fill_pattern, version_key
from imagekit.verify.checksums import ChecksumEntry, parse_checksum_file

_HREF = re.compile(rb"""href\s*=\s*["']([^"'#?]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """A file upstream offers for a release, with the digests its metadata states."""

    filename: str
    compose: str
    digests: Mapping[str, str] = field(default_factory=dict)


def on_mirror(url: str, root: str, mirror: str | None) -> str:
    """``url`` with the recipe's ``mirror_root`` replaced by ``mirror`` (unchanged without)."""
    if not mirror:
        return url
    if not mirror.startswith(("http://", "https://", "file://")):
        raise RecipeError(f"mirror {mirror!r} must be an http://, https:// or file:// URL")
    if not url.startswith(root):
        raise RecipeError(
            f"cannot use a mirror for {url}: it is not under the recipe's mirror_root {root}"
        )
    return mirror.rstrip("/") + "/" + url[len(root) :]


@dataclass
class Context:
    """One resolution: the recipe, where to ask, and what was read (for provenance)."""

    recipe: Recipe
    source: HttpSource
    spec: ResolveSpec
    cache: UpstreamCache
    mirror: str | None
    consulted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        arches = self.spec.arches
        if arches and self.recipe.arch not in arches:
            raise RecipeError(
                f"{self.recipe.name} has no image for {self.recipe.arch}; "
                f"choose --arch {' or '.join(sorted(arches))}"
            )

    def values(self, release: str = "", candidate: Candidate | None = None) -> dict[str, str]:
        recipe = self.recipe
        values = {
            "name": recipe.name,
            "arch": recipe.arch,
            "upstream_arch": self.spec.arches.get(recipe.arch, recipe.arch),
            **self.spec.releases.get(release, {}),
        }
        if release:
            values["release"] = release
        if candidate is not None:
            values.update(compose=candidate.compose, filename=candidate.filename)
        return values

    def fill(self, template: str, values: Mapping[str, str]) -> str:
        try:
            return template.format_map(values)
        except KeyError as exc:
            raise RecipeError(
                f"{self.recipe.name}: {template!r} uses {exc}, which is not known yet there"
            ) from None

    def fetch(self, template: str, values: Mapping[str, str]) -> tuple[str, bytes]:
        """Read a metadata file: from the mirror when there is one, else from upstream."""
        url = on_mirror(self.fill(template, values), self.source.mirror_root, self.mirror)
        self.consulted.append(url)
        return url, self.cache.get(url)

    def listing(self, template: str, values: Mapping[str, str]) -> list[str]:
        """The names an HTML directory listing links to."""
        _, html = self.fetch(template, values)
        names = (unquote(href.decode("utf-8", "replace")) for href in _HREF.findall(html))
        return [n.rstrip("/").rsplit("/", 1)[-1] for n in names if n.strip("./")]

    def matcher(self, release: str) -> Callable[[str], str | None]:
        """File name -> its compose id ('' without a ``compose`` group), None if no match."""
        patterns = [fill_pattern(p, self.values(release)) for p in self.spec.image]

        def match(name: str) -> str | None:
            for pattern in patterns:
                if found := pattern.fullmatch(name):
                    return found.groupdict().get("compose") or ""
            return None

        return match

    def pick_release(self, available: Iterable[str]) -> str:
        """The requested release, or the newest for ``latest``, among those both sides know.

        A release the recipe does not list never gets here (the loader refuses it before any
        request); only a recipe that lists none learns its versions from upstream.
        """
        known = self.spec.releases
        present = sorted({r for r in available if not known or r in known}, key=version_key)
        wanted, name = self.recipe.version, self.recipe.name
        if wanted == "latest" and present:
            return present[-1]
        if wanted in present:
            return wanted
        offered = ", ".join([*present, "latest"]) if present else "none"
        if wanted in known or wanted == "latest":
            raise RecipeError(
                f"{name} {wanted} is not published for {self.recipe.arch} where imagekit looked "
                f"({', '.join(self.consulted) or 'the recipe'}); available: {offered}"
            )
        raise RecipeError(f"{name} has no version {wanted!r}; known versions: {offered}")

    def choose(self, release: str, candidates: list[Candidate], where: str) -> Candidate:
        """The newest compose, or the one whose sha256 the user pinned."""
        name = f"{self.recipe.name} {release} ({self.recipe.arch})"
        if not candidates:
            raise RecipeError(
                f"{name}: no file in {where} matches {' or '.join(self.spec.image)}; upstream may "
                "have renamed its images: update the recipe"
            )
        newest = max(candidates, key=lambda c: (version_key(c.compose), c.filename))
        pin = self.source.pinned.get("sha256")
        if pin is None:
            return newest
        for candidate in candidates:
            if candidate.digests.get("sha256") == pin:
                return candidate
        if all("sha256" in c.digests for c in candidates):
            raise ChecksumError(
                f"{name}: upstream no longer offers the image sha256:{pin}; it now offers "
                f"{newest.filename} (sha256:{newest.digests['sha256']}). Drop the @sha256 pin "
                "to take it"
            )
        return newest  # the checksum file decides whether the pin still holds

    def concrete(self, release: str, candidate: Candidate) -> HttpSource:
        """The source with every template filled and the keys of this release pinned."""
        values = self.values(release, candidate)
        pins = self.source.release_keys.get(release)
        source = self.source
        return replace(
            source,
            url=self.fill(source.url, values),
            checksum_url=self.fill(source.checksum_url, values) if source.checksum_url else None,
            signature_url=self.fill(source.signature_url, values) if source.signature_url else None,
            metalink=self.fill(source.metalink, values) if source.metalink else None,
            filename=candidate.filename,
            keys=pins.files if pins else source.keys,
            fingerprints=pins.fingerprints if pins else source.fingerprints,
            release_keys={},
            resolve=None,
        )


def checksum_entries(data: bytes, url: str) -> list[ChecksumEntry]:
    try:
        return parse_checksum_file(data.decode("utf-8"), url)
    except UnicodeDecodeError as exc:
        raise ChecksumError(f"{url} is not UTF-8 text: {exc}") from exc


def parse_json(data: bytes, url: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{url} is not valid JSON ({exc}); check the URL or the mirror") from exc


def field_of(obj: Any, key: str) -> Any:
    """``obj[key]`` for JSON objects, ``""`` for anything else: metadata shapes vary."""
    return obj.get(key, "") if isinstance(obj, dict) else ""
