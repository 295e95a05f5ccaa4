"""What an operation is: one row of the table, and the value checks several rows share.

A row names the TOML key (and so the CLI flag), how its value is written, how parse_step checks
it, how the build key and the manifest show it, and how it is applied to the guest.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagekit.customize.context import Context


class ArgKind(enum.Enum):
    """How a value is written in TOML (and how often its CLI flag may be given)."""

    FLAG = "bool"
    TEXT = "string"
    LIST = "list of strings"
    CSV = "list of strings, commas split"


@dataclass(frozen=True)
class Operation:
    """One operation of a step: ``arg`` is True, a string or a tuple of strings by ArgKind."""

    name: str
    arg: str | bool | tuple[str, ...]

    @property
    def values(self) -> tuple[str, ...]:
        """The argument as the strings its operation checks and applies, one by one."""
        if isinstance(self.arg, bool):
            return ("true",) if self.arg else ()
        return (self.arg,) if isinstance(self.arg, str) else self.arg


Apply = Callable[[Context, tuple[str, ...]], None]


def _as_written(value: str) -> str:
    return value


def _literal(value: str, base_dir: Path) -> object:
    return value


def _no_check(value: str) -> None:
    pass


def _no_secret(value: str) -> str | None:
    return None


@dataclass(frozen=True)
class OperationSpec:
    """One row of the table. ``apply`` None: handled outside apply_step (size, network)."""

    name: str
    kind: ArgKind
    metavar: str
    help: str
    apply: Apply | None
    check: Callable[[str], object] = _no_check  # raises ValueError; run at parse time
    canon: Callable[[str, Path], object] = _literal  # build-key form: secrets/files hashed
    shown: Callable[[str], str] = _as_written  # manifest and progress form: secrets as "set"
    secret: Callable[[str], str | None] = _no_secret  # the secret a value spells out, if any
    network: bool = False
    version: int = 1

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def hides_values(self) -> bool:
        """True when values are secret (shown otherwise than written): errors must not echo them."""
        return self.shown is not _as_written


def each(fn: Callable[[Context, str], None]) -> Apply:
    """An Apply that calls ``fn`` for every value, in list order."""

    def apply(ctx: Context, values: tuple[str, ...]) -> None:
        for value in values:
            fn(ctx, value)

    return apply


# --- value checks several operations share (parse_step runs them before any launch) ----------

USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")


def split_fields(value: str, parts: int, form: str) -> list[str]:
    """``value`` split on ':' into exactly ``parts`` non-empty fields (the last keeps its ':')."""
    fields = value.split(":", parts - 1)
    if len(fields) != parts or not all(fields):
        raise ValueError(f"expected {form}")
    return fields


def check_guest_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"guest path {path!r} must be absolute")


def check_command(value: str) -> None:
    if not value.strip():
        raise ValueError("empty command")
