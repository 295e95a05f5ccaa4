"""Finding recipes by name (bundled, user, ``$IMAGEKIT_RECIPES``) and describing what they offer."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagekit import config
from imagekit.core.refs import validate_digest
from imagekit.errors import RecipeError
from imagekit.recipe.load import load_recipe_file, read_recipe_text
from imagekit.recipe.model import HttpSource, KickstartSource, Recipe, RecipeSource
from imagekit.recipe.templates import version_key

RECIPE_SUFFIX = ".toml"
BUNDLED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class RecipeFile:
    """A recipe file found under the ``name`` it declares (its file stem if it declares none)."""

    name: str
    path: Path
    shadows: Path | None = None  # a file of the same name in a later directory, hidden by this
    clash: Path | None = None  # another file in the same directory that declares the same name


def recipe_dirs() -> list[Path]:
    """Where bundled and user recipes are looked up, first match wins."""
    return config.recipe_dirs(BUNDLED_RECIPES)


def find_recipes() -> dict[str, RecipeFile]:
    """Recipe name -> file, across all recipe directories (earlier directories win)."""
    found: dict[str, RecipeFile] = {}
    for directory in recipe_dirs():
        here: dict[str, RecipeFile] = {}
        for path in _recipe_files(directory):
            name = declared_name(path)
            known = here.get(name)
            here[name] = (
                replace(known, clash=known.clash or path) if known else RecipeFile(name, path)
            )
        for name, entry in here.items():
            earlier = found.get(name)
            if earlier is None:
                found[name] = entry
            elif earlier.shadows is None:
                found[name] = replace(earlier, shadows=entry.path)
    return found


def bundled_recipes() -> dict[str, Path]:
    """Recipe name -> file, across all recipe directories (earlier directories win)."""
    return {name: entry.path for name, entry in find_recipes().items()}


def declared_name(path: Path) -> str:
    """The ``name`` a recipe file declares; its file stem when it cannot be read or has none.

    A file that cannot be loaded is still listed (by ``imagekit recipes``, with its error).
    """
    try:
        name = tomllib.loads(read_recipe_text(path)).get("name")
    except (RecipeError, tomllib.TOMLDecodeError):
        return path.stem
    return name if isinstance(name, str) and name else path.stem


def find_recipe(name: str) -> RecipeFile:
    """The recipe file ``imagekit pull NAME`` means: by declared name, else by file stem."""
    recipes = find_recipes()
    entry = recipes.get(name) or _by_stem(recipes.values(), name)
    if entry is None:
        known = ", ".join(sorted(recipes)) or "none"
        raise RecipeError(f"no recipe named {name!r}; known recipes: {known}")
    if entry.clash is not None:
        raise RecipeError(
            f"recipes {entry.path} and {entry.clash} both declare name = {name!r}; rename one"
        )
    return entry


def _by_stem(entries: Iterable[RecipeFile], stem: str) -> RecipeFile | None:
    return next((entry for entry in entries if entry.path.stem == stem), None)


def _recipe_files(directory: Path) -> list[Path]:
    """The ``*.toml`` files of a recipe directory; a missing one has none."""
    try:
        if not directory.exists():
            return []
        if not directory.is_dir():
            raise RecipeError(
                f"recipe directory {directory} is not a directory: correct {config.RECIPES_ENV} "
                "or move the file away"
            )
        return sorted(directory.glob("*" + RECIPE_SUFFIX))
    except OSError as exc:
        raise RecipeError(f"cannot list recipe directory {directory}: {exc.strerror}") from exc


def load_recipe(
    target: str | os.PathLike[str], *, version: str | None = None, arch: str | None = None
) -> Recipe:
    """Load a recipe from a file path or a recipe name, optionally ``name:version``.

    A trailing ``@sha256:<hex>`` pins the image file's digest, as ``imagekit inspect`` shows it.
    A version the recipe does not offer is refused here, before anything is fetched.
    """
    text_target = os.fspath(target)
    pin = None
    if "@sha256:" in text_target:
        text_target, _, digest = text_target.rpartition("@")
        pin = validate_digest(digest)
    name = _recipe_name(text_target)
    if name is None:
        return load_recipe_file(Path(text_target), version=version, arch=arch, pin=pin)
    tagged_version = text_target.partition(":")[2]
    return load_recipe_file(
        find_recipe(name).path, version=version or tagged_version or None, arch=arch, pin=pin
    )


def shadowing(target: str) -> RecipeFile | None:
    """The recipe a TARGET names when it hides another of its name (a user recipe over a
    bundled one); None for a file path, an unknown name or a recipe that hides nothing."""
    name = _recipe_name(target.rpartition("@sha256:")[0] or target)
    try:
        found = find_recipe(name) if name is not None else None
    except RecipeError:
        return None  # loading the target says what is wrong
    return found if found is not None and found.shadows is not None else None


def _recipe_name(target: str) -> str | None:
    """The recipe name in ``NAME[:VERSION]``; None when ``target`` is a file path."""
    if target.endswith(RECIPE_SUFFIX) or os.sep in target or Path(target).is_file():
        return None
    return target.partition(":")[0]


def load_base(source: RecipeSource) -> Recipe:
    """The recipe a ``kind = "recipe"`` source starts from; a path is relative to its recipe."""
    if _names_file(source):
        return load_recipe_file(source.base_dir / source.recipe)
    return load_recipe(source.recipe)


def base_path(source: RecipeSource) -> Path:
    """The file :func:`load_base` reads (RecipeError for an unknown name), without loading it:
    how a folder of recipes finds which of them build on which."""
    if _names_file(source):
        return source.base_dir / source.recipe
    return find_recipe(source.recipe.partition(":")[0].partition("@")[0]).path


def _names_file(source: RecipeSource) -> bool:
    return source.recipe.endswith(RECIPE_SUFFIX) or "/" in source.recipe


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
    for name, entry in find_recipes().items():
        shadows = {"shadows": str(entry.shadows) if entry.shadows else None}
        try:
            if entry.clash is not None:
                find_recipe(name)  # raises: the name is ambiguous
            rows.append({**describe(load_recipe_file(entry.path)), **shadows})
        except RecipeError as exc:
            rows.append({"name": name, "path": str(entry.path), "error": str(exc), **shadows})
    return rows
