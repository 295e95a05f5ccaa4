"""The command line: it parses arguments and calls the public API (``imagekit.Store``) only.

Each command group is a module that adds its commands to the one typer ``app``.
"""

import copy
import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup
from typer.main import get_command_name, get_group

from imagekit.cli import build, check, images, recipes, registry, sign, vm
from imagekit.cli.app import ClickError, Interrupted, app, emit_json
from imagekit.errors import ImagekitError

__all__ = ["app", "build", "check", "images", "main", "recipes", "registry", "sign", "vm"]

INTERRUPTED = 130


def main() -> None:
    """Console entry point: every failure is one line on stderr and its exit code.

    typer runs without its standalone mode, so usage errors reach here instead of being drawn
    as a panel; with ``--json`` a failure is also ``{"error", "exit_code"}`` on stdout.
    """
    args = sys.argv[1:]
    options = args[: args.index("--")] if "--" in args else args
    try:
        code = _group(args)(args=args, prog_name="imagekit", standalone_mode=False)
    except (ImagekitError, ClickError, Interrupted, KeyboardInterrupt) as exc:
        message, code = _failure(exc)
        if "--json" in options:
            emit_json({"error": message, "exit_code": code})
        line = "interrupted" if code == INTERRUPTED else f"error: {message}"
        typer.echo(f"imagekit: {line}", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _group(args: list[str]) -> TyperGroup:
    """The click group for ``args``: with only the command they name when they start with one.

    typer builds every command's parameters from its signature on each start (~12 % of a cached
    pull); a run needs one. With no command, ``--help`` or an unknown name the group has them all,
    so help, usage errors and their suggestions are unchanged. ``get_group`` keeps one command a
    group (``app()`` would make it the top-level command, dropping its name from the line).
    """
    name = args[0] if args else None
    commands = [c for c in app.registered_commands if _name(c.name, c.callback) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return get_group(app)
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return get_group(only)


def _name(given: str | None, callback: Callable[..., Any] | None) -> str | None:
    """A registered command's name: given, else its function's (typer's rule)."""
    if given is not None or callback is None:
        return given
    return get_command_name(callback.__name__)


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of what ended a command."""
    if isinstance(exc, ImagekitError):
        return str(exc), exc.exit_code
    if isinstance(exc, ClickError):  # click's message on one line, pointing at --help
        message = " ".join(exc.format_message().split()).rstrip(".")
        message = message or "give a command"  # no arguments at all: typer showed the help
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "imagekit"
        return f"{message} (see '{command} --help')", exc.exit_code
    return "interrupted", INTERRUPTED
