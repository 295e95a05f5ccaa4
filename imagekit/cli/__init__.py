"""The command line: it parses arguments and calls the public API (``imagekit.Store``) only.

Each command group is a module that adds its commands to the one typer ``app``.
"""

import sys

import typer

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
        code = app(args=args, prog_name="imagekit", standalone_mode=False)
    except (ImagekitError, ClickError, Interrupted, KeyboardInterrupt) as exc:
        message, code = _failure(exc)
        if "--json" in options:
            emit_json({"error": message, "exit_code": code})
        line = "interrupted" if code == INTERRUPTED else f"error: {message}"
        typer.echo(f"imagekit: {line}", err=True)
    sys.exit(code if isinstance(code, int) else 0)


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
