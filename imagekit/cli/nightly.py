"""``imagekit build --all DIR``'s display and files: a live table on a terminal, plain lines in
pipes (stderr), the summary or JSON on stdout, the report and JUnit files where asked."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from imagekit.cli.app import emit_json

if TYPE_CHECKING:
    import imagekit
    from imagekit.nightly import Listener, NightlyOptions, NightlyReport, RecipeResult


@dataclass(frozen=True)
class Outputs:
    report: Path | None = None  # --report r.json
    junit: Path | None = None  # --junit junit.xml
    as_json: bool = False


def build_folder(
    store: imagekit.Store, directory: Path, options: NightlyOptions, outputs: Outputs
) -> int:
    """Run the night, write the files, print the summary; the exit code to end with."""
    from imagekit.core.atomic import replace_file
    from imagekit.nightly import build_all, junit_xml

    with _display(not outputs.as_json) as listener:
        report = build_all(store, directory, options, listener=listener)
    if outputs.report is not None:
        import json

        text = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
        replace_file(outputs.report, text.encode(), mode=0o644)
    if outputs.junit is not None:
        replace_file(outputs.junit, junit_xml(report), mode=0o644)
    if outputs.as_json:
        emit_json(report.to_json())
    else:
        _summary(report)
    return report.exit_code


@contextmanager
def _display(enabled: bool) -> Iterator[Listener | None]:
    """A rich live table on stderr when it is a terminal, else one plain line per change."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        yield lambda result: typer.echo(f"imagekit: {result.recipe}: {_state(result)}", err=True)
        return
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    rows: dict[str, RecipeResult] = {}

    def table() -> Table:
        grid = Table("recipe", "state", "seconds", "launches", box=None)
        for result in rows.values():
            grid.add_row(
                result.recipe, _state(result), f"{result.seconds:.1f}", str(result.launches)
            )
        return grid

    with Live(table(), console=Console(stderr=True), transient=True) as live:

        def show(result: RecipeResult) -> None:
            rows[result.path] = result
            live.update(table())

        yield show


def _state(result: RecipeResult) -> str:
    if result.skipped_because:
        return f"skipped-because: {result.skipped_because}"
    if result.error and result.state == "failed":
        return f"failed: {result.error}"
    return result.state


def _summary(report: NightlyReport) -> None:
    for result in report.results:
        detail = result.error or result.skipped_because or result.ref or ""
        if result.skipped_because:
            detail = f"skipped-because: {result.skipped_because}"
        layers = f"{result.layers_built} built {result.layers_cached} cached"
        typer.echo(
            f"{result.status:>9} {result.seconds:7.1f}s {layers:>18}  {result.recipe}  {detail}"
        )
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    typer.echo(f"{len(report.results)} recipes in {report.seconds:.1f}s: {counts}")
