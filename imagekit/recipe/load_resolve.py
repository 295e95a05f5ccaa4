"""A ``[resolve]`` table, and the templates of a resolving recipe checked against it.

Each template is filled at a known moment (before the file is chosen, or after), so a
placeholder it cannot have then is an error when the recipe loads, saying which one and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from imagekit.errors import RecipeError
from imagekit.recipe.model import KeyPin, ResolveSpec
from imagekit.recipe.schema import VERSION_RE
from imagekit.recipe.table import Values
from imagekit.recipe.templates import (
    FILE_FIELDS,
    PLACEHOLDERS,
    RESOLVED_FIELDS,
    check_fields,
    fill_pattern,
    listed,
    pattern_fields,
)

# What each resolver reads besides the image pattern (see imagekit.resolve).
RESOLVER_NEEDS = {
    "fedora-releases": ("metadata_url", "releases_url"),
    "checksum-listing": (),
    "debian-json": ("metadata_url",),
    "ubuntu-sums": ("metadata_url", "compose"),
}


def resolve_spec(resolve: Values, where: str) -> ResolveSpec:
    """The ``[resolve]`` table (already read by the key table) with what its resolver needs."""
    resolver = resolve["resolver"]
    needs = RESOLVER_NEEDS[resolver]
    for key in ("metadata_url", "releases_url", "compose"):
        if key in needs and not resolve[key]:
            raise RecipeError(f"{where}: resolver {resolver!r} needs {key}")
        if key not in needs and key in resolve.given:
            raise RecipeError(f"{where}: resolver {resolver!r} does not use {key}")
    return ResolveSpec(
        resolver=resolver,
        image=resolve["image"],
        metadata_url=resolve["metadata_url"],
        releases_url=resolve["releases_url"],
        compose=resolve["compose"],
        arches=resolve["arches"],
        releases=_releases(resolve["releases"], f"{where} releases"),
    )


def _releases(
    releases: Mapping[str, Mapping[str, str]], where: str
) -> Mapping[str, Mapping[str, str]]:
    """Release names a tag can hold, each setting the same template variables."""
    names = {frozenset(variables) for variables in releases.values()}
    if len(names) > 1:
        raise RecipeError(f"{where}: every release must set the same variables")
    for release, variables in releases.items():
        if not re.fullmatch(VERSION_RE, release) or release == "latest":
            raise RecipeError(f"{where}: invalid release {release!r}")
        for variable in variables:
            if variable in (*RESOLVED_FIELDS, *PLACEHOLDERS) or not variable.isidentifier():
                raise RecipeError(f"{where}: {variable!r} cannot be a variable name")
    return releases


def check_resolving(
    source: Values, spec: ResolveSpec, release_keys: Mapping[str, KeyPin], where: str
) -> ResolveSpec:
    """Check a resolving recipe's templates against what is known when each one is filled."""
    mirror_root: str = source["mirror_root"]
    if "filename" in source.given:
        raise RecipeError(f"{where}: filename is found by the resolver; use {{filename}} in url")
    if not mirror_root or "{" in mirror_root:
        raise RecipeError(f"{where}: a resolving recipe needs a literal mirror_root")
    if spec.resolver == "checksum-listing" and not source["checksum_url"]:
        raise RecipeError(f"{where}: resolver 'checksum-listing' reads checksum_url; set it")
    if release_keys:
        if spec.releases and set(spec.releases) != set(release_keys):
            raise RecipeError(f"{where}: [resolve] releases and fingerprints name other releases")
        spec = replace(spec, releases=spec.releases or {r: {} for r in release_keys})
    variables = set(next(iter(spec.releases.values()), {}))
    used = _check_templates(source, spec, variables, where)
    if unused := variables - used:
        raise RecipeError(f"{where}: release variable(s) {', '.join(sorted(unused))} are unused")
    on_mirror = [source[key] for key in ("url", "checksum_url", "signature_url")]
    on_mirror += [spec.releases_url]
    if spec.resolver != "fedora-releases":  # Fedora's releases.json lives outside the mirror
        on_mirror.append(spec.metadata_url)
    for template in filter(None, on_mirror):
        if not template.startswith(mirror_root):
            raise RecipeError(f"{where}: {template!r} is not under mirror_root {mirror_root!r}")
    return spec


def _check_templates(
    source: Values, spec: ResolveSpec, variables: set[str], where: str
) -> set[str]:
    """The placeholders the URLs and regexes use, each one checked where it is filled."""
    before = {*FILE_FIELDS, *variables}
    after = {*RESOLVED_FIELDS, *variables}
    evidence = before if spec.resolver == "checksum-listing" else after
    used = check_fields(source["url"], after, where, "url")
    used |= check_fields(source["checksum_url"], evidence, where, "checksum_url")
    used |= check_fields(source["signature_url"], evidence, where, "signature_url")
    used |= check_fields(spec.metadata_url, before, where, "metadata_url")
    used |= check_fields(spec.releases_url, {"name", "arch", "upstream_arch"}, where, "releases")
    for pattern in (*spec.image, *([spec.compose] if spec.compose else [])):
        fields = pattern_fields(pattern)
        if not fields <= before:
            raise RecipeError(f"{where}: regex {pattern!r} may only use {listed(before)}")
        try:
            compiled = fill_pattern(pattern, dict.fromkeys(fields, "x"))
        except (re.error, OverflowError, RecursionError) as exc:  # {99999999999}, deep nesting
            raise RecipeError(f"{where}: invalid regex {pattern!r}: {exc}") from exc
        if pattern == spec.compose and "compose" not in compiled.groupindex:
            raise RecipeError(f"{where}: compose regex {pattern!r} needs a (?P<compose>...) group")
        used |= fields
    return used
