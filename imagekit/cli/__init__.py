"""The command line: it parses arguments and calls the public API (``imagekit.Store``) only.

Each command group is a module that adds its commands to the one typer ``app``.
"""

import sys

import typer

from imagekit.cli import build, check, images, recipes, vm
from imagekit.cli.app import app
from imagekit.errors import ImagekitError

__all__ = ["app", "build", "check", "images", "main", "recipes", "vm"]


def main() -> None:
    """Console entry point: map typed errors to one line and an exit code."""
    try:
        app()
    except ImagekitError as exc:
        typer.echo(f"imagekit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("imagekit: interrupted", err=True)
        sys.exit(130)
