"""A key table: each key of one TOML table with its form, default, meaning and allowed values.

Reading a table through it, rendering it as Markdown and as JSON Schema are here, so what the
loader accepts, what the docs say and what the schema says are made from the same rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imagekit.errors import RecipeError
from imagekit.recipe import forms
from imagekit.recipe.forms import Form, Invalid, Json


@dataclass(frozen=True)
class Key:
    """One key: its form, meaning, default (as written in TOML) and what values it allows.

    ``pattern`` is a regex every string in the value must match whole (``pattern_says`` is that
    rule in words); ``minimum``/``maximum`` bound a number or a size; ``tables`` describe a
    table's keys (several: the ``kind`` key picks one).
    """

    name: str
    form: Form
    help: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    pattern: str = ""
    pattern_says: str = ""
    minimum: int | None = None
    maximum: int | None = None
    tables: tuple[Table, ...] = ()


@dataclass(frozen=True)
class Table:
    """The keys of one TOML table; ``label`` names it in errors after the recipe's path."""

    label: str
    title: str
    keys: tuple[Key, ...]
    kind: str = ""  # a [source] variant: the ``kind`` that selects it
    example: str = ""  # what the table looks like, for the error when the value is not a table

    def key(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"{self.title} has no key {name!r}")

    def default(self, name: str) -> Any:
        """The value ``name`` has when a recipe does not set it, as the loader reads it."""
        return default_value(self.key(name))


class Values(dict[str, Any]):
    """A table's values as read, defaults filled in; ``given`` names the keys the recipe set."""

    def __init__(self, values: Mapping[str, Any], given: Iterable[str]) -> None:
        super().__init__(values)
        self.given = frozenset(given)


def all_tables(table: Table) -> list[Table]:
    """``table`` and every table below it, in the order the docs list them."""
    found = [table]
    for key in table.keys:
        for sub in key.tables:
            found += all_tables(sub)
    return found


def read_table(table: Table, data: Mapping[str, Any], where: str) -> Values:
    """The table's values, checked key by key; an unknown or missing key is an error."""
    allowed = [key.name for key in table.keys]
    if unknown := sorted(set(data) - set(allowed)):
        raise RecipeError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    values = {}
    for key in table.keys:
        if key.name in data:
            values[key.name] = read_value(key, data[key.name], where)
        elif key.required:
            raise RecipeError(f"{where}: missing required key {key.name!r}")
        else:
            values[key.name] = default_value(key)
    return Values(values, data)


def read_value(key: Key, raw: Any, where: str) -> Any:
    """One key's value as the loader uses it, or a RecipeError naming the key and its rule."""
    try:
        value = key.form.parse(raw, lambda text: _matching(key, text))
    except Invalid as exc:
        example = key.tables[0].example if key.tables else ""
        expected = f"a table like {example}" if example else exc
        raise RecipeError(f"{where}: {key.name} must be {expected}") from exc
    if key.tables:
        return _read_sub_table(key, value, where)
    if key.choices and value not in key.choices:
        raise RecipeError(
            f"{where}: unknown {key.name} {_shown(value)}; {key.name} must be "
            + one_of(key.choices)
        )
    if (key.minimum is not None and value < key.minimum) or (
        key.maximum is not None and value > key.maximum
    ):
        raise RecipeError(f"{where}: {key.name} must be {_bounds(key)}")
    if key.required and value in ("", ()):
        raise RecipeError(f"{where}: {key.name} must not be empty")
    return value


def default_value(key: Key) -> Any:
    """What an unset key reads as: its default, parsed like a written one, or its form's empty."""
    if key.default is None:
        return key.form.empty
    return read_value(key, key.default, "imagekit.recipe.schema")


def one_of(choices: Iterable[str]) -> str:
    """``a or b``; ``one of a, b or c``."""
    *rest, last = choices
    if not rest:
        return last
    return ("one of " if len(rest) > 1 else "") + f"{', '.join(rest)} or {last}"


def _read_sub_table(key: Key, value: Mapping[str, Any], where: str) -> Values:
    kinds = [table.kind for table in key.tables]
    kind = value.get("kind", kinds[0])
    table = next((t for t in key.tables if t.kind == kind), None)
    if table is None:
        raise RecipeError(
            f"{where}: unsupported {key.name} kind {_shown(kind)} (supported: {', '.join(kinds)})"
        )
    return read_table(table, value, f"{where} {table.label}".strip())


def _matching(key: Key, text: str) -> str:
    if key.pattern and not re.fullmatch(key.pattern, text):
        raise Invalid(f"{key.pattern_says}, not {_shown(text)}")
    return text


def _bounds(key: Key) -> str:
    def amount(n: int) -> str:
        return f"{n >> 20} MiB" if key.form is forms.SIZE else str(n)

    if key.maximum is None:
        return f"at least {amount(key.minimum or 0)}"
    return f"{key.form.says} from {amount(key.minimum or 0)} to {amount(key.maximum)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def reference(root: Table) -> str:
    """``root`` and the tables below it as Markdown, one key table each."""
    lines: list[str] = []
    for table in all_tables(root):
        lines += [
            f"### {table.title}",
            "",
            "| key | value | default | meaning |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{key.name}` | {_value_says(key)} | {_default_says(key)} | {key.help} |"
            for key in table.keys
        ]
        lines.append("")
    return "\n".join(lines)


def _value_says(key: Key) -> str:
    if key.choices:
        return one_of(f'`"{choice}"`' for choice in key.choices)
    if key.tables:
        return "a table, below"
    says = key.form.says + (f" ({key.pattern_says})" if key.pattern_says else "")
    if key.minimum is not None or key.maximum is not None:
        says += ", " + _bounds(key).removeprefix(key.form.says + " ")
    return says


def _default_says(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None or key.tables:
        return ""
    return f"`{json.dumps(key.default)}`"


def json_schema(root: Table) -> Json:
    """``root`` as a JSON Schema object (draft 2020-12 keywords only)."""
    return _table_schema(root)


def _table_schema(table: Table) -> Json:
    schema: Json = {
        "type": "object",
        "properties": {key.name: _key_schema(key) for key in table.keys},
        "additionalProperties": False,
    }
    if required := [key.name for key in table.keys if key.required]:
        schema["required"] = required
    return schema


def _key_schema(key: Key) -> Json:
    one: Json = dict(forms.LINE_SCHEMA)
    if key.pattern:
        one = {"type": "string", "pattern": f"^(?:{key.pattern})$"}
    if key.choices:
        one = {"type": "string", "enum": list(key.choices)}
    schema: Json
    if key.tables:
        variants = [_table_schema(table) for table in key.tables]
        schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
    else:
        schema = key.form.schema(one)
    if key.form is forms.COUNT:
        bounds = {"minimum": key.minimum, "maximum": key.maximum}
        schema |= {name: n for name, n in bounds.items() if n is not None}
    schema["description"] = key.help
    if key.default is not None:
        schema["default"] = key.default
    return schema
