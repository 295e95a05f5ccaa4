"""The recipe as provenance may record it: the secrets of its ``[[customize]]`` steps taken out.

A built image's config keeps its recipe's text, and a registry may publish it. The operations
table knows which values are secret (``OperationSpec.hides_values``), how they show (``shown``,
the "set" of the step record) and what secret a value spells out (``secret``); this module
applies that to the text. It stays TOML: every string that is a secret value is replaced by its
shown form, a comment naming a secret loses it, and a line that still holds one after that is
withheld as a whole. The build keys do not depend on this text: secrets enter them keyed.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from imagekit.customize.spec import OperationSpec
from imagekit.customize.table import OPERATIONS
from imagekit.recipe import Recipe

REDACTED = "<redacted>"
WITHHELD = "# (imagekit withheld a line that holds a secret)"


@dataclass(frozen=True)
class _Secrets:
    """Each secret value as written → as shown, and the secrets those values spell out."""

    shown: Mapping[str, str]
    spelled: frozenset[str]


def recorded_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` with its text and steps as they may be recorded; the same recipe if no step
    holds a secret. Its ``digest`` is then that of the recorded text."""
    found = _secrets(recipe.customize)
    if not found.shown:
        return recipe
    return replace(
        recipe,
        text=_redact_text(recipe.text, found),
        customize=tuple(_shown_table(table) for table in recipe.customize),
    )


def _secrets(tables: tuple[Mapping[str, Any], ...]) -> _Secrets:
    shown: dict[str, str] = {}
    spelled: set[str] = set()
    for table in tables:
        for name, raw in table.items():
            spec = OPERATIONS.get(name)
            if spec is not None and spec.hides_values:
                for value in _strings(raw):
                    shown[value], secret = _shown(spec, value)
                    if secret:
                        spelled.add(secret)
    return _Secrets(shown, frozenset(spelled))


def _strings(raw: object) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    return [item for item in items if isinstance(item, str)]


def _shown(spec: OperationSpec, value: str) -> tuple[str, str | None]:
    """The value as shown and the secret it spells out; one parse_step would refuse is
    withheld whole (build parses first, but this is public)."""
    try:
        return spec.shown(value), spec.secret(value)
    except ValueError:
        return REDACTED, value


def _shown_table(table: Mapping[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, raw in table.items():
        spec = OPERATIONS.get(name)
        if spec is None or not spec.hides_values:
            shown[name] = raw
        elif isinstance(raw, str):
            shown[name] = _shown(spec, raw)[0]
        else:
            shown[name] = [_shown(spec, value)[0] for value in _strings(raw)]
    return shown


def _redact_text(text: str, found: _Secrets) -> str:
    """TOML ``text`` with secret strings shown, secrets cut from comments, leaking lines out."""
    pieces: list[str] = []
    end = 0
    for start, stop, kind in _tokens(text):
        pieces.append(text[end:start])
        token = text[start:stop]
        if kind == "comment":
            for secret in found.spelled:
                token = token.replace(secret, REDACTED)
        else:
            value = _decoded(token)
            if value is not None and value in found.shown:
                token = json.dumps(found.shown[value])  # a JSON string is a TOML basic string
        pieces.append(token)
        end = stop
    pieces.append(text[end:])
    lines = "".join(pieces).split("\n")
    return "\n".join(
        WITHHELD if any(secret in line for secret in found.spelled) else line for line in lines
    )


def _decoded(token: str) -> str | None:
    try:
        value = tomllib.loads(f"v = {token}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, str) else None


def _tokens(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, stop, "string" or "comment") of every string and comment of valid TOML."""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "#":
            stop = text.find("\n", i)
            stop = len(text) if stop < 0 else stop
            yield i, stop, "comment"
        elif char in "\"'":
            stop = _string_end(text, i)
            yield i, stop, "string"
        else:
            stop = i + 1
        i = stop


def _string_end(text: str, start: int) -> int:
    """Where the string opening at ``start`` ends: basic or literal, one line or multi-line."""
    quote = text[start]
    multi = text.startswith(quote * 3, start)
    i = start + (3 if multi else 1)
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
        elif multi and text.startswith(quote * 3, i):
            run = 3
            while run < 5 and text.startswith(quote, i + run):  # up to two quotes end the value
                run += 1
            return i + run
        elif not multi and text[i] == quote:
            return i + 1
        else:
            i += 1
    return len(text)
