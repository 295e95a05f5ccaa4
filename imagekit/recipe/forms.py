"""How a recipe value may be written (a string, a size, a list of strings...): one parser each.

A form gives what errors and the docs call it, its JSON Schema, and the parser the loader uses,
so the key table (:mod:`imagekit.recipe.schema`) only has to name a key's form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
LINE_SCHEMA: Json = {"type": "string", "pattern": "^[^\\n\\u0000]*$"}


class Invalid(ValueError):
    """A value that is not of its key's form; the loader adds where, which key and what it got."""


@dataclass(frozen=True)
class Form:
    """One way of writing a value: ``says`` names it in errors and the docs.

    ``parse`` gets the TOML value and a check for each string in it (a key's pattern), and
    returns the value the loader uses; ``schema`` builds the JSON Schema around the schema of
    one string; ``empty`` is what an unset key without a default reads as.
    """

    says: str
    parse: Callable[[Any, Callable[[str], str]], Any]
    schema: Callable[[Json], Json]
    empty: Any = None


def _line(value: Any, check: Callable[[str], str]) -> str:
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise Invalid("a single-line string")
    return check(value)


def _words(value: Any, check: Callable[[str], str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid("a string or a list of strings")
    return tuple(check(v) for v in value)


def _flag(value: Any, check: Callable[[str], str]) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def _count(value: Any, check: Callable[[str], str]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid("a whole number")
    return value


SIZE_SAYS = "a size: a number with K, M, G or T (512M, 20G)"
DURATION_SAYS = "a duration: a positive number with s, m or h (90s, 10m, 2h)"


def parse_size(text: str) -> int:
    """``512M``, ``20G``, ``1T`` or plain bytes, in binary units as qemu-img reads them."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not match:
        raise Invalid(SIZE_SAYS)
    exponent = " KMGT".index(match[2] or " ")
    return int(match[1]) << (10 * exponent)


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h`` or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip().lower())
    if not match or float(match[1]) <= 0:
        raise Invalid(DURATION_SAYS)
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _size(value: Any, check: Callable[[str], str]) -> int:
    if not isinstance(value, str):
        raise Invalid(SIZE_SAYS)
    return parse_size(value)


def _duration(value: Any, check: Callable[[str], str]) -> float:
    if not isinstance(value, str):
        raise Invalid(DURATION_SAYS)
    return parse_duration(value)


def _string_table(value: Any, check: Callable[[str], str]) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid("a table of strings")
    return {name: check(v) for name, v in value.items()}


def _fingerprints(value: Any, check: Callable[[str], str]) -> Any:
    """A list (one key for every release), or a table of release -> its fingerprint(s)."""
    if isinstance(value, dict):
        return {release: _words(v, check) for release, v in value.items()}
    return _words(value, check)


def _releases(value: Any, check: Callable[[str], str]) -> dict[str, dict[str, str]]:
    """``["9", "10"]``, or a table of release -> its template variables."""
    if isinstance(value, list):
        return {release: {} for release in _words(value, check)}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise Invalid("a list of releases or a table of them")
    return {release: _string_table(v, lambda s: s) for release, v in value.items()}


def _steps(value: Any, check: Callable[[str], str]) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(step, dict) for step in value):
        raise Invalid("a list of [[customize]] tables")
    return tuple(value)


def _string_schema(pattern: str) -> Json:
    return {"type": "string", "pattern": pattern}


def _words_schema(one: Json) -> Json:
    return {"anyOf": [one, {"type": "array", "items": one}]}


def _table_of(values: Json) -> Json:
    return {"type": "object", "additionalProperties": values}


LINE = Form("a single-line string", _line, lambda one: one, "")
WORDS = Form("a string or a list of strings", _words, _words_schema, ())
FLAG = Form("true or false", _flag, lambda one: {"type": "boolean"}, False)
COUNT = Form("a whole number", _count, lambda one: {"type": "integer"}, 0)
SIZE = Form(
    SIZE_SAYS,
    _size,
    lambda one: _string_schema("^\\s*[0-9]+[KMGTkmgt]?\\s*$"),
    0,
)
DURATION = Form(
    DURATION_SAYS,
    _duration,
    lambda one: _string_schema("^\\s*[0-9]+(\\.[0-9]+)?[SMHsmh]?\\s*$"),
    0.0,
)
STRING_TABLE = Form(
    "a table of strings", _string_table, lambda one: _table_of({"type": "string"}), {}
)
FINGERPRINTS = Form(
    'a list of fingerprints, or a table "RELEASE" = fingerprint(s)',
    _fingerprints,
    lambda one: {"anyOf": [_words_schema(one), _table_of(_words_schema(one))]},
    (),
)
RELEASES = Form(
    'a list of releases, or a table "RELEASE" = { variable = "value" }',
    _releases,
    lambda one: {
        "anyOf": [
            {"type": "array", "items": one},
            _table_of(_table_of({"type": "string"})),
        ]
    },
    {},
)
STEPS = Form(
    "a list of [[customize]] tables",
    _steps,
    lambda one: {"type": "array", "items": {"type": "object"}},
    (),
)


def _table(value: Any, check: Callable[[str], str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("a table")
    return value


TABLE = Form("a table", _table, lambda one: {"type": "object"}, None)
