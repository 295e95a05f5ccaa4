"""A recipe's input key: everything a build of it depends on, found without building.

The key hashes the recipe's recorded text, its base's identity (a downloaded base: the
verified upstream identity the build cache keys it by; another recipe: that recipe's input
key), the files its steps, test and check read, and the code version. Nightly builds compare it
with the key recorded at the last build: equal keys, nothing to do, no launch, and within the
metadata TTL no request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imagekit import customize
from imagekit._version import __version__
from imagekit.build import acceptance
from imagekit.build.build import Builder, http_base_identity
from imagekit.core.digest import file_digest, identity, keyed_digest
from imagekit.errors import RecipeError
from imagekit.recipe import (
    HttpSource,
    KickstartSource,
    Recipe,
    RecipeSource,
    ScratchSource,
    base_path,
    load_base,
)
from imagekit.sources import scratch

INPUTS_CODE_VERSION = "1"  # bump when what the key covers changes: every recipe rebuilds once


Known = Mapping[Path, str]  # recipe file (resolved) -> its input key, already worked out


def input_key(builder: Builder, recipe: Recipe, known: Known | None = None) -> str:
    """``sha256:<hex>`` of what a build of ``recipe`` would depend on; RecipeError if a file
    it names cannot be read, and the evidence's errors (VerificationError, FetchError).

    A base recipe's key is taken from ``known`` when it is there (a folder's recipes are keyed
    bases first), else worked out the same way.
    """
    return identity(_inputs(builder, recipe, (), known or {}))


def _inputs(
    builder: Builder, recipe: Recipe, seen: tuple[str, ...], known: Known
) -> dict[str, Any]:
    where = str(recipe.path or recipe.name)
    if where in seen:
        raise RecipeError(f"recipe cycle: {' -> '.join([*seen, where])}")
    layout = builder.session.layout
    digest_key = layout.digest_key()
    base_dir = recipe.path.parent if recipe.path else Path.cwd()
    steps = [
        customize.canonical_step(
            customize.parse_step(table, where=f"{where} customize[{i}]"), base_dir, digest_key
        )
        for i, table in enumerate(recipe.customize)
    ]
    recorded = customize.recorded_recipe(recipe)
    profile = acceptance.recipe_profile(recipe)
    return {
        "recipe": recorded.digest,
        "base": _base(builder, recipe, (*seen, where), known),
        "steps": steps,
        "test": acceptance.boot_test_inputs(layout, recipe.test) if recipe.test else None,
        "check": profile.digest if profile is not None else None,
        "code": {"imagekit": __version__, "inputs": INPUTS_CODE_VERSION},
    }


def _base(builder: Builder, recipe: Recipe, seen: tuple[str, ...], known: Known) -> Any:
    source = recipe.source
    if isinstance(source, HttpSource):
        return http_base_identity(builder.session, recipe, source)
    if isinstance(source, RecipeSource):
        return {"recipe": _recipe_key(builder, source, seen, known)}
    if isinstance(source, ScratchSource):
        return {"scratch": scratch.scratch_identity(source), "code": scratch.SCRATCH_CODE_VERSION}
    return _kickstart(builder, recipe, source, seen, known)


def _recipe_key(builder: Builder, source: RecipeSource, seen: tuple[str, ...], known: Known) -> str:
    """The input key of the recipe a source names: known already, or worked out."""
    path = base_path(source).resolve()
    if path in known:
        return known[path]
    return identity(_inputs(builder, load_base(source), seen, known))


def _kickstart(
    builder: Builder,
    recipe: Recipe,
    source: KickstartSource,
    seen: tuple[str, ...],
    known: Known,
) -> Any:
    """The kickstart file (keyed: it may hold passwords), the VM settings and the installer:
    its recipe's inputs, or the local ISO's pinned sha256."""
    try:
        kickstart = source.kickstart.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read kickstart {source.kickstart}: {exc.strerror}") from exc
    settings = {k: v for k, v in asdict(source).items() if k not in ("kickstart", "base_dir")}
    installer: Any = source.installer_sha256
    if source.installer_recipe:
        installer = _recipe_key(
            builder, RecipeSource(source.installer_recipe, source.base_dir), seen, known
        )
    elif source.installer_path is not None and not installer:
        installer = file_digest(source.installer_path)
    return {
        "kickstart": keyed_digest(builder.session.layout.digest_key(), kickstart),
        "settings": {k: str(v) for k, v in settings.items()},
        "installer": installer,
        "recipe": recipe.name,
    }
