"""Finding recipes by name (bundled, user, ``$IMAGEKIT_RECIPES``) and describing what they offer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imagekit import config
from imagekit.core.refs import validate_digest
from imagekit.errors import RecipeError
from imagekit.recipe.load import load_recipe_file
from imagekit.recipe.model import HttpSource, KickstartSource, Recipe, RecipeSource
from imagekit.recipe.templates import version_key

RECIPE_SUFFIX = ".toml"
BUNDLED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_dirs() -> list[Path]:
    """Where bundled and user recipes are looked up, first match wins."""
    return config.recipe_dirs(BUNDLED_RECIPES)


def bundled_recipes() -> dict[str, Path]:
    """Recipe name -> file, across all recipe directories (earlier directories win)."""
    found: dict[str, Path] = {}
    for directory in recipe_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*" + RECIPE_SUFFIX)):
                found.setdefault(path.stem, path)
    return found


def load_recipe(
    target: str | os.PathLike[str], *, version: str | None = None, arch: str | None = None
) -> Recipe:
    """Load a recipe from a file path or a recipe name, optionally ``name:version``.

    A trailing ``@sha256:<hex>`` pins the image file's digest, as ``imagekit inspect`` shows it.
    """
    text_target = os.fspath(target)
    pin = None
    if "@sha256:" in text_target:
        text_target, _, digest = text_target.rpartition("@")
        pin = validate_digest(digest)
    path = Path(text_target)
    if text_target.endswith(RECIPE_SUFFIX) or os.sep in text_target or path.is_file():
        if not path.is_file():
            raise RecipeError(f"recipe file {text_target!r} does not exist")
        return load_recipe_file(path, version=version, arch=arch, pin=pin)
    name, _, tagged_version = text_target.partition(":")
    recipes = bundled_recipes()
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise RecipeError(f"no recipe named {name!r}; known recipes: {known}")
    return load_recipe_file(
        recipes[name], version=version or tagged_version or None, arch=arch, pin=pin
    )


def load_base(source: RecipeSource) -> Recipe:
    """The recipe a ``kind = "recipe"`` source starts from; a path is relative to its recipe."""
    candidate = source.base_dir / source.recipe
    if source.recipe.endswith(RECIPE_SUFFIX) or "/" in source.recipe:
        return load_recipe_file(candidate)
    return load_recipe(source.recipe)


def load_installer(source: KickstartSource) -> Recipe:
    """The installer ISO's recipe; only for ``installer = { recipe = ... }``."""
    return load_base(RecipeSource(source.installer_recipe, source.base_dir))


def describe(recipe: Recipe) -> dict[str, Any]:
    """What ``imagekit recipes`` shows: the versions, arches and level a recipe offers."""
    source = recipe.source
    info: dict[str, Any] = {
        "name": recipe.name,
        "description": recipe.description,
        "version": recipe.version,
        "kind": source.kind,
        "path": str(recipe.path) if recipe.path else None,
        "level": "",
        "resolver": None,
        "versions": [recipe.version],
        "arches": [recipe.arch],
    }
    if isinstance(source, HttpSource):
        info["level"] = source.required_level
        if source.resolve is not None:
            info["resolver"] = source.resolve.resolver
            info["versions"] = sorted(source.resolve.releases, key=version_key)
            info["arches"] = sorted(source.resolve.arches) or [recipe.arch]
    return info


def recipe_summaries() -> list[dict[str, Any]]:
    """Every recipe found, described; a broken one is listed with its error, not skipped."""
    rows: list[dict[str, Any]] = []
    for name, path in bundled_recipes().items():
        try:
            rows.append(describe(load_recipe_file(path)))
        except RecipeError as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
    return rows
