"""Placeholders in recipe URLs and image-name regexes, and the version order resolvers use."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

from imagekit.errors import RecipeError

PLACEHOLDERS = ("name", "version", "arch")
# Placeholders of a resolving recipe: known before the file is chosen, then after.
FILE_FIELDS = ("name", "arch", "upstream_arch", "release")
RESOLVED_FIELDS = (*FILE_FIELDS, "compose", "filename")
_REGEX_FIELD = re.compile(r"\{([a-z_]+)\}")  # ``{release}`` in a regex; ``{8}`` stays a quantifier


def version_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders ``9 < 10`` and ``9.5-20241118.0 < 9.6-20250101.0``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.findall(r"\d+|\D+", text)
    )


def pattern_fields(pattern: str) -> set[str]:
    """The ``{field}`` placeholders of an image-name regex."""
    return set(_REGEX_FIELD.findall(pattern))


def fill_pattern(pattern: str, values: Mapping[str, str]) -> re.Pattern[str]:
    """Compile an image-name regex with its placeholders replaced by the escaped values."""
    return re.compile(_REGEX_FIELD.sub(lambda m: re.escape(values[m[1]]), pattern))


def expand(template: str, values: Mapping[str, str], where: str) -> str:
    """Expand ``{name} {version} {arch}``; anything else in braces is a mistake worth reporting."""
    try:
        # parse() is lazy: a lone "}" raises ValueError while iterating, so inside the try.
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in values:
                raise RecipeError(
                    f"{where}: unknown placeholder {{{field_name}}} in {template!r}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
        return template.format_map(values)
    except (ValueError, IndexError) as exc:
        raise RecipeError(f"{where}: malformed placeholder in {template!r}: {exc}") from exc


def check_fields(template: str, allowed: set[str], where: str, key: str) -> set[str]:
    """The placeholders of a URL template; any outside ``allowed`` is an error saying why."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise RecipeError(f"{where}: malformed placeholder in {template!r}: {exc}") from exc
    if "version" in fields:
        raise RecipeError(
            f"{where}: {key} cannot use {{version}}, which may be 'latest'; use {{release}}"
        )
    if unknown := fields - allowed:
        raise RecipeError(
            f"{where}: {key} uses {listed(unknown)}, not known there; known: {listed(allowed)}"
        )
    return fields


def listed(fields: Iterable[str]) -> str:
    """``{a}, {b}``: placeholder names as a recipe writes them."""
    return ", ".join("{" + f + "}" for f in sorted(fields))
