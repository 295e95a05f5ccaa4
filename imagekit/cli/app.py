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
from typing import Annotated, Any

import typer

import imagekit
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

app = typer.Typer(
    help="Fetch, verify, customize and store virtual-machine disk images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default: $IMAGEKIT_HOME, see docs)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def open_store(path: Path | None) -> imagekit.Store:
    return imagekit.open_store(path)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def progress_display(enabled: bool) -> Iterator[ProgressCallback]:
    """A rich progress bar on a terminal; nothing in pipes or with --json."""
    if not enabled or not sys.stderr.isatty():
        yield ignore_progress
        return
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
