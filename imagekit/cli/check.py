"""``imagekit check``: does a stored image resemble its edition? A table of pass/differ/missing."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imagekit.cli.app import JsonOption, StoreOption, app, emit_json, open_store, progress_display
from imagekit.errors import CheckError

if TYPE_CHECKING:  # imagekit.check loads libguestfs: only when the command runs
    from imagekit.check import CheckReport

COLUMNS = ("STATUS", "ID", "REQUIRED", "EXPECTED", "FOUND", "SOURCE")
_STYLES = {"pass": "green", "differ": "red", "missing": "yellow"}
WIDE = 140  # terminal columns from which the table shows each check's detail


@app.command()
def check(
    ref: Annotated[str, typer.Argument(help="Stored image NAME[:TAG] or digest.")],
    profile: Annotated[
        str,
        typer.Option(help="Profile NAME (recipes/profiles/NAME.toml) or a profile .toml file."),
    ],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare an image with its edition's profile, offline; exit 9 if a required check fails."""
    with progress_display(not as_json) as progress:
        report = open_store(store).check(ref, profile, progress=progress)
    if as_json:
        emit_json(report.to_json())
    elif sys.stdout.isatty():
        _print_rich(report)
    else:
        typer.echo(plain_report(report))
    if not report.passed:
        failed = ", ".join(f"{r.check.id} ({r.status})" for r in report.failed)
        raise CheckError(
            f"{ref} does not resemble {report.profile.name}: required check(s) {failed}"
        )


def rows(report: CheckReport) -> list[tuple[str, ...]]:
    """One row per check, in the order of ``COLUMNS``."""
    return [
        (
            result.status,
            result.check.id,
            "required" if result.check.required else "advisory",
            _shown(result.check.expect),
            _shown(result.found),
            result.check.source.id,
        )
        for result in report.results
    ]


def plain_report(report: CheckReport) -> str:
    """The table as aligned text, the sources it cites, and the verdict (for pipes and logs)."""
    table = [COLUMNS, *rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join([_heading(report), *lines, "", *_sources(report), report.summary()])


def _print_rich(report: CheckReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    detail = console.width >= WIDE  # what was read, where: only when it fits beside the rest
    table = Table(box=None, title=_heading(report), title_justify="left")
    for column in (*COLUMNS, *(["DETAIL"] if detail else [])):
        table.add_column(column, no_wrap=column != "DETAIL")
    for row, result in zip(rows(report), report.results, strict=True):
        status = f"[{_STYLES[row[0]]}]{row[0]}[/]"
        cells = [status, *row[1:], *([result.detail] if detail else [])]
        table.add_row(*cells, style=None if result.check.required else "dim")
    console.print(table)
    console.print("\n".join(["", *_sources(report), report.summary()]), highlight=False)


def _heading(report: CheckReport) -> str:
    os = report.os
    product = os.get("product_name") or os.get("distro") or "unknown"
    return f"{report.ref or report.image} ({product}) against profile {report.profile.name}"


def _sources(report: CheckReport) -> list[str]:
    cited = dict.fromkeys(result.check.source for result in report.results)
    return [
        f"{source.id}: {source.title} <{source.url}>"
        + (" (cited from memory)" if source.from_memory else "")
        for source in cited
    ]


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
