"""What an operation works on: the mounted guest, the recipe's directory and the step's result."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.errors import CustomizeError
from imagekit.guest.appliance import InspectedOS


@dataclass
class StepResult:
    """What a caller shows the user: notes, random passwords (shown once, never stored), output."""

    messages: list[str] = field(default_factory=list)
    generated_passwords: dict[str, str] = field(default_factory=dict)
    command_output: list[str] = field(default_factory=list)


def local_path(text: str, base_dir: Path) -> Path:
    """A host path from a recipe: ``~`` expanded, relative to the recipe's directory."""
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base_dir / path


@dataclass
class Context:
    """The guestfs handle ``g`` (mounted), with the file helpers several operations share."""

    g: Any
    guest_os: InspectedOS  # what inspection (or its record) says the mounted guest is
    base_dir: Path
    result: StepResult

    def local(self, text: str) -> Path:
        return local_path(text, self.base_dir)

    def read(self, path: str) -> str:
        return bytes(self.g.read_file(path)).decode("utf-8", "surrogateescape")

    def write(self, path: str, text: str) -> None:
        self.g.write(path, text.encode("utf-8", "surrogateescape"))

    def rows(self, path: str) -> list[list[str]]:
        """An /etc/passwd-style file as fields; split and join on ':' round-trip every line."""
        return [line.split(":") for line in self.read(path).splitlines()]

    def save_rows(self, path: str, rows: list[list[str]]) -> None:
        self.write(path, "".join(":".join(row) + "\n" for row in rows))

    def account(self, user: str) -> tuple[int, int, str]:
        """uid, gid and home of an existing guest user."""
        for row in self.rows("/etc/passwd"):
            if row[0] == user and len(row) >= 6:
                return int(row[2]), int(row[3]), row[5]
        raise CustomizeError(
            f"user {user!r} does not exist in the guest's /etc/passwd; create it with "
            f'`user = ["{user}"]` in this or an earlier step'
        )

    def delete_globs(self, patterns: tuple[str, ...] | list[str]) -> None:
        """Remove whatever each glob matches; a pattern matching nothing is no error."""
        for pattern in patterns:
            for path in self.g.glob_expand(pattern):
                self.g.rm_rf(path)
