"""The ``imagekit`` command: parse arguments, call the library, render results. No logic here.

Exit codes: 0 success, 1 other imagekit error, 2 bad recipe or usage, 3 download failed,
4 verification failed, 5 unsafe image refused, 6 store problem (incl. fsck findings),
7 customization failed, 8 boot check failed, 9 a required check of a profile failed,
130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperGroup

import imagekit
from imagekit.config import MAX_CONNECTIONS
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

if TYPE_CHECKING:
    from imagekit.sources.session import NetworkOptions

# click's base exception (usage errors and the like). typer vendors click from 0.26 on, so it is
# reached through a public typer name, whichever click that is: BadParameter -> UsageError ->
# ClickException.
ClickError = cast(type[typer.BadParameter], typer.BadParameter.__mro__[2])


class Interrupted(Exception):
    """SIGINT reached a command. typer turns KeyboardInterrupt into a silent exit 130, so the
    commands raise this instead and ``main`` prints the documented line."""


class _Commands(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted from None


app = typer.Typer(
    cls=_Commands,
    help="Fetch, verify, customize and store virtual-machine disk images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rendering it with rich costs ~0.15 s of imports on every `--help`.
    rich_markup_mode=None,
)

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default: $IMAGEKIT_HOME, see docs)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ConnectionsOption = Annotated[
    int | None,
    typer.Option(
        "--connections",
        min=1,
        max=MAX_CONNECTIONS,
        help=f"Range connections per large download, 1 to {MAX_CONNECTIONS} (default: the "
        "config file's connections, else 4).",
    ),
]


def network(
    connections: int | None,
    *,
    mirror: str | None = None,
    refresh: bool = False,
    offline: bool = False,
    allow_loopback_http: bool = False,
) -> NetworkOptions:
    """A command line's download options; ``connections`` only if given (else the config's)."""
    options: NetworkOptions = {
        "mirror": mirror,
        "refresh": refresh,
        "offline": offline,
        "allow_loopback_http": allow_loopback_http,
    }
    if connections is not None:
        options["connections"] = connections
    return options


def open_store(path: Path | None) -> imagekit.Store:
    return imagekit.open_store(path)


def note_shadowing(target: str) -> None:
    """One line on stderr when TARGET names a recipe that hides another of its name."""
    from imagekit.recipe import shadowing

    found = shadowing(target)
    if found is not None:
        note = f"recipe {found.name} is {found.path}, shadowing {found.shadows}"
        typer.echo(f"imagekit: note: {note}", err=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def progress_display(enabled: bool) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr when it is a terminal; nothing in pipes or with --json.

    stdout carries only results (text or JSON), whatever stderr is.
    """
    if not enabled or not sys.stderr.isatty():
        yield ignore_progress
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def show(event: ProgressEvent) -> None:
            bar.update(
                task,
                description=f"{event.stage}: {event.message}",
                completed=event.done or 0,
                total=event.total,
            )

        yield show


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
