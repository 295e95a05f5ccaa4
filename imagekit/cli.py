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
from imagekit.errors import ImagekitError, RecipeError, StoreError
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
    target: Annotated[
        str,
        typer.Argument(help="Recipe file, or bundled recipe NAME[:VERSION][@sha256:DIGEST]."),
    ],
    store: StoreOption = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            envvar="IMAGEKIT_MIRROR",
            help="The distribution's published root on a mirror (see docs/recipes.md).",
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="Tag as NAME:TAG instead of name:version.")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (default: the host's).")] = None,
    refresh: Annotated[bool, typer.Option(help="Re-check upstream even if stored.")] = False,
    offline: Annotated[
        bool, typer.Option(help="No network: cached upstream metadata and stored images only.")
    ] = False,
    allow_loopback_http: Annotated[
        bool,
        typer.Option(
            help="Let checksum-over-tls recipes read checksum files over plain http from "
            "127.0.0.1/localhost (tests, a local caching proxy); recorded in provenance."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Fetch an image, prove it genuine, and store it."""
    from imagekit.pull import pull as run_pull

    recipe = imagekit.load_recipe(target, arch=arch)
    with _progress(not as_json) as progress:
        image = run_pull(
            _store(store),
            recipe,
            mirror=mirror,
            tag=tag,
            refresh=refresh,
            offline=offline,
            allow_loopback_http=allow_loopback_http,
            progress=progress,
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
    inspection = config.get("inspection")
    if inspection:
        lines.append(
            f"os:           {inspection.get('product_name')} ({inspection.get('distro')} "
            f"{inspection.get('major')}.{inspection.get('minor')}, {inspection.get('arch')})"
        )
    for number, disk in enumerate(image.disks):
        lines.append(f"layer {number}:      {disk.digest} ({_size(disk.size)})")
    for number, step in enumerate(config.get("steps", []), 1):
        lines.append(f"step {number}:       {json.dumps(step.get('step'), sort_keys=True)}")
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
def build(
    target: Annotated[str, typer.Argument(help="Recipe file, or bundled recipe NAME[:VERSION].")],
    store: StoreOption = None,
    tag: Annotated[
        str | None, typer.Option(help="Tag as NAME:TAG instead of name:version.")
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(envvar="IMAGEKIT_MIRROR", help="Mirror for downloaded bases.")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Build a recipe: its base, then one cached qcow2 layer per customize step."""
    from imagekit.build import build as run_build

    recipe = imagekit.load_recipe(target)
    with _progress(not as_json) as progress:
        result = run_build(
            _store(store),
            recipe,
            tag=tag,
            mirror=mirror,
            use_cache=not no_cache,
            progress=progress,
        )
    _print_build(result, as_json)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def customize(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Stored image NAME[:TAG] or digest.")],
    store: StoreOption = None,
    tag: Annotated[str | None, typer.Option(help="Tag the result NAME:TAG.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Apply one step to a stored image: --hostname NAME --run-command CMD ... (see docs)."""
    from imagekit.build import customize_image

    table = _step_from_arguments(ctx.args)
    with _progress(not as_json) as progress:
        result = customize_image(_store(store), ref, table, tag=tag, progress=progress)
    _print_build(result, as_json)


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="Stored image NAME[:TAG] or digest.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    store: StoreOption = None,
    disk_format: Annotated[
        str, typer.Option("--format", help="qcow2, raw, vmdk, vdi or vhdx.")
    ] = "qcow2",
    compress: Annotated[bool, typer.Option(help="Compress (qcow2 only).")] = False,
    sparse: Annotated[bool, typer.Option(help="Keep zeros unallocated.")] = True,
    link: Annotated[bool, typer.Option(help="Thin overlay backed by the store.")] = False,
) -> None:
    """Flatten an image's layers into one standalone file (or --link a thin overlay)."""
    image = _store(store).image(ref)
    with _progress(True) as progress:
        path = image.export(
            output,
            disk_format=disk_format,
            compress=compress,
            sparse=sparse,
            link=link,
            progress=progress,
        )
    typer.echo(f"{image.ref} -> {path}")


def _step_from_arguments(args: list[str]) -> dict[str, object]:
    """``--hostname web1 --run-command CMD ...`` as a [[customize]] table, by the ops table."""
    from imagekit.customize import OPERATIONS, ArgKind

    by_flag = {spec.flag: spec for spec in OPERATIONS.values()}
    table: dict[str, object] = {}
    repeated: dict[str, list[str]] = {}  # list operations: each flag may be given many times
    words = iter(args)
    for word in words:
        flag, has_value, inline = word.partition("=")
        spec = by_flag.get(flag)
        if spec is None:
            raise RecipeError(f"unknown option {word!r}; operations: {', '.join(sorted(by_flag))}")
        if spec.kind is ArgKind.FLAG:
            table[spec.name] = True
            continue
        value = inline if has_value else next(words, None)
        if value is None:
            raise RecipeError(f"{flag} needs a value ({spec.metavar})")
        if spec.kind is ArgKind.TEXT:
            table[spec.name] = value
        else:
            repeated.setdefault(spec.name, []).append(value)
    table.update(repeated)
    if not table:
        raise RecipeError(
            "give at least one operation, e.g. --hostname NAME (see docs/customize.md)"
        )
    return table


def _print_build(result: Any, as_json: bool) -> None:
    image = result.image
    if as_json:
        _emit_json(
            {
                **image.summary(),
                "layers": [
                    {"name": r.name, "digest": r.digest, "cached": r.cached, "seconds": r.seconds}
                    for r in result.layers
                ],
                "generated_passwords": result.generated_passwords,
            }
        )
        return
    for report in result.layers:
        state = "cached" if report.cached else "built"
        typer.echo(f"{state:>6} {report.seconds:7.1f}s {report.digest[:19]} {report.name}")
    for user, password in result.generated_passwords.items():
        typer.echo(f"generated password for {user}: {password}")
    typer.echo(f"{image.ref} {image.disk_digest}\n{image.path}")


@app.command()
def recipes(as_json: JsonOption = False) -> None:
    """List the recipes imagekit can find, with their versions and verification level."""
    from imagekit.recipe import recipe_summaries

    rows = recipe_summaries()
    if as_json:
        _emit_json(rows)
        return
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        if "error" in row:
            typer.echo(f"{row['name']:<{width}} error: {row['error']}")
            continue
        listed = row["versions"]
        if len(listed) > 3 and all(v.isdigit() for v in listed):  # one key per release: 40-47
            listed = [f"{listed[0]}-{listed[-1]}"]
        versions = " ".join([*listed, *(["latest"] if row["resolver"] else [])])
        typer.echo(
            f"{row['name']:<{width}} {row['level'] or '-':<18} {versions:<19} {row['description']}"
        )


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
