"""The ``imagekit`` command: parse arguments, call the library, render results. No logic here.

Exit codes: 0 success, 1 other imagekit error, 2 bad recipe or usage, 3 download failed,
4 verification failed, 5 unsafe image refused, 6 store problem (incl. fsck findings),
7 customization failed, 130 interrupted.
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
from imagekit.errors import ImagekitError, StoreError
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

app = typer.Typer(
    help="Fetch, verify, customize and store virtual-machine disk images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", envvar="IMAGEKIT_HOME", help="Store directory (default: see docs)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _store(path: Path | None) -> imagekit.Store:
    return imagekit.open_store(path)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback]:
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


@app.command()
def pull(
    target: Annotated[str, typer.Argument(help="Recipe file, or bundled recipe NAME[:VERSION].")],
    store: StoreOption = None,
    mirror: Annotated[
        str | None,
        typer.Option(envvar="IMAGEKIT_MIRROR", help="Fetch from this mirror instead of upstream."),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="Tag as NAME:TAG instead of name:version.")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (default: the host's).")] = None,
    refresh: Annotated[bool, typer.Option(help="Re-check upstream even if stored.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Fetch an image, prove it genuine, and store it."""
    recipe = imagekit.load_recipe(target, arch=arch)
    with _progress(not as_json) as progress:
        image = _store(store).pull(
            recipe, mirror=mirror, tag=tag, refresh=refresh, progress=progress
        )
    if as_json:
        _emit_json(image.summary())
    else:
        state = "up to date" if image.cached else "pulled"
        typer.echo(f"{image.ref} {state} ({image.verification}) {image.disk_digest}\n{image.path}")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A local qcow2 or raw disk image.")],
    name: Annotated[str, typer.Option("--name", help="NAME:TAG to store it under.")],
    store: StoreOption = None,
    disk_format: Annotated[
        str | None, typer.Option("--format", help="qcow2 or raw (default: detected).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Store a local image of your own (recorded as unverified)."""
    image = _store(store).import_file(file, name, disk_format=disk_format)
    if as_json:
        _emit_json(image.summary())
    else:
        typer.echo(f"{image.ref} imported (unverified) {image.disk_digest}\n{image.path}")


@app.command()
def images(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """List stored images."""
    rows = [image.summary() for image in _store(store).images()]
    if as_json:
        _emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("REF", "VERIFIED", "FORMAT", "SIZE", "IMAGE", box=None)
    for row in rows:
        table.add_row(
            row["ref"], row["verification"], row["format"], _size(row["size"]), row["image"][:19]
        )
    Console().print(table)


@app.command()
def inspect(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] or manifest digest.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an image's manifest and provenance."""
    image = _store(store).image(ref)
    record = {**image.summary(), "manifest": image.manifest, "provenance": image.provenance}
    if as_json:
        _emit_json(record)
        return
    config = image.provenance
    verification = config.get("verification", {})
    source = config.get("source", {})
    lines = [
        f"ref:          {image.ref}",
        f"manifest:     {image.digest}",
        f"image:        {image.disk_digest} ({image.format}, {_size(image.disk.size)})",
        f"path:         {image.path}",
        f"verification: {verification.get('level')}"
        + (f" by {verification['signer']}" if verification.get("signer") else ""),
        f"source:       {source.get('url') or source.get('path') or source.get('kind')}",
        f"created:      {config.get('created')}",
    ]
    typer.echo("\n".join(lines))


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] to untag.")], store: StoreOption = None
) -> None:
    """Remove a ref (its blobs go at the next gc)."""
    descriptor = _store(store).remove(ref)
    typer.echo(f"untagged {ref} ({descriptor.digest}); run 'imagekit gc' to free space")


@app.command()
def gc(
    store: StoreOption = None,
    partial: Annotated[bool, typer.Option(help="Also drop resumable partial downloads.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would go.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove unreferenced blobs and stale temporary files."""
    report = _store(store).gc(remove_partial=partial, dry_run=dry_run)
    if as_json:
        _emit_json(
            {
                "removed_blobs": report.removed_blobs,
                "removed_temp": report.removed_temp,
                "freed_bytes": report.freed_bytes,
                "dry_run": dry_run,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {len(report.removed_blobs)} blob(s), {len(report.removed_temp)} temp file(s), "
        f"{_size(report.freed_bytes)}"
    )


@app.command()
def fsck(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Rehash every blob and check every ref; exit 6 when anything is wrong."""
    report = _store(store).fsck()
    if as_json:
        _emit_json(
            {
                "ok": report.ok,
                "problems": report.problems,
                "blobs_checked": report.blobs_checked,
                "bytes_checked": report.bytes_checked,
            }
        )
    else:
        for problem in report.problems:
            typer.echo(f"problem: {problem}")
        typer.echo(
            f"checked {report.blobs_checked} blob(s), {_size(report.bytes_checked)}: "
            + ("ok" if report.ok else f"{len(report.problems)} problem(s)")
        )
    if not report.ok:
        raise typer.Exit(StoreError.exit_code)


@app.command()
def verify(
    file: Annotated[Path | None, typer.Argument(help="The downloaded image to check.")] = None,
    checksum: Annotated[Path, typer.Option(help="The checksum file (CHECKSUM, SHA256SUMS).")] = ...,  # type: ignore[assignment]
    signature: Annotated[
        Path | None, typer.Option(help="Detached signature of the checksum file.")
    ] = None,
    key: Annotated[list[Path], typer.Option(help="Pinned OpenPGP public key (repeatable).")] = [],  # noqa: B006
    name: Annotated[
        str | None, typer.Option(help="File name to look up (default: FILE's name).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a checksum file's signature and, given FILE, the file against it."""
    result = imagekit.verify_local(
        checksum, signature=signature, keys=key, file=file, filename=name
    )
    if as_json:
        _emit_json(result)
        return
    typer.echo(f"signer: {result['signer'] or 'none (unsigned)'}")
    if file is None:
        for entry in result["entries"]:
            size = f" {entry['size']} bytes" if entry["size"] is not None else ""
            typer.echo(f"{entry['algorithm']} {entry['digest']} {entry['filename']}{size}")
    else:
        typer.echo(f"{file}: OK ({result['match']['algorithm']} {result['match']['digest']})")


@app.command()
def recipes(as_json: JsonOption = False) -> None:
    """List the recipes imagekit can find."""
    rows = [{"name": name, "path": str(path)} for name, path in imagekit.list_recipes().items()]
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<24} {row['path']}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


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
