"""A folder of recipes as a build graph: which recipe builds on which, in an order that works.

A recipe builds on another of the folder when its ``[source]`` is ``kind = "recipe"`` (or its
kickstart installer is a recipe) naming that file, by path or by a name that resolves to it. A
recipe that does not load is still a node: it fails alone, and only what builds on it is
skipped. A cycle is refused before anything runs, naming the files in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import RecipeError
from imagekit.recipe import (
    RECIPE_SUFFIX,
    KickstartSource,
    Recipe,
    RecipeSource,
    base_path,
    load_recipe_file,
)


@dataclass(frozen=True)
class Node:
    """One recipe file: loaded, or the one-line reason it does not load."""

    path: Path
    recipe: Recipe | None = None
    error: str = ""
    bases: tuple[Path, ...] = ()  # files of the same folder this one builds on

    @property
    def label(self) -> str:
        return self.recipe.ref if self.recipe is not None else self.path.name


@dataclass(frozen=True)
class Graph:
    """The folder's recipes by resolved path, in dependency order (bases first)."""

    directory: Path
    nodes: dict[Path, Node] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def dependants(self, path: Path) -> list[Path]:
        """Every recipe that builds on ``path``, directly or through another."""
        found: list[Path] = []
        for node in self:
            if node.path not in found and any(base == path or base in found for base in node.bases):
                found.append(node.path)
        return found


def load_folder(directory: Path) -> Graph:
    """The ``*.toml`` recipes of ``directory`` as a graph; RecipeError for a cycle or no recipes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError(f"{directory} is not a directory of recipes")
    paths = sorted(p.resolve() for p in directory.glob("*" + RECIPE_SUFFIX))
    if not paths:
        raise RecipeError(f"{directory} holds no recipes (*{RECIPE_SUFFIX})")
    loaded = {path: _node(path, set(paths)) for path in paths}
    order: dict[Path, Node] = {}
    for path in paths:
        _visit(loaded, path, [], order)
    return Graph(directory, order)


def _node(path: Path, folder: set[Path]) -> Node:
    try:
        recipe = load_recipe_file(path)
    except RecipeError as exc:
        return Node(path, error=str(exc))
    bases = []
    for name, base_dir in _bases(recipe):
        try:
            candidate = base_path(RecipeSource(name, base_dir)).resolve()
        except RecipeError:
            continue  # not in the folder: the build says what is wrong with it
        if candidate in folder:
            bases.append(candidate)
    return Node(path, recipe, bases=tuple(bases))


def _bases(recipe: Recipe) -> list[tuple[str, Path]]:
    source = recipe.source
    if isinstance(source, RecipeSource):
        return [(source.recipe, source.base_dir)]
    if isinstance(source, KickstartSource) and source.installer_recipe:
        return [(source.installer_recipe, source.base_dir)]
    return []


def _visit(
    loaded: dict[Path, Node], path: Path, stack: list[Path], order: dict[Path, Node]
) -> None:
    """Depth first, bases before dependants; a path met again on the stack is a cycle."""
    if path in order:
        return
    if path in stack:
        cycle = [p.name for p in stack[stack.index(path) :]] + [path.name]
        raise RecipeError(f"recipe cycle: {' -> '.join(cycle)}; break it in one of these files")
    node = loaded[path]
    for base in node.bases:
        _visit(loaded, base, [*stack, path], order)
    order[path] = node
