"""Commands on stored images: pull, import, images, inspect, rm, gc, fsck, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from imagekit.cli.app import (
    JsonOption,
    StoreOption,
    app,
    emit_json,
    human_size,
    open_store,
    progress_display,
)
from imagekit.errors import StoreError


@app.command()
def pull(
    target: Annotated[
        str,
        typer.Argument(
            help="Recipe file, bundled recipe NAME[:VERSION][@sha256:DIGEST], or an image in a "
            "registry: oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]."
        ),
    ],
    store: StoreOption = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            help="The distribution's published root on a mirror (default: $IMAGEKIT_MIRROR, "
            "then the config file's mirror; see docs/recipes.md)."
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
    insecure: Annotated[
        bool,
        typer.Option(help="oci:// only: allow plain http to a registry that is not on loopback."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Fetch an image, prove it genuine, and store it."""
    with progress_display(not as_json) as progress:
        image = open_store(store).pull(
            target,
            arch=arch,
            mirror=mirror,
            tag=tag,
            refresh=refresh,
            offline=offline,
            allow_loopback_http=allow_loopback_http,
            insecure=insecure,
            progress=progress,
        )
    if as_json:
        emit_json(image.summary())
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
    image = open_store(store).import_file(file, name, disk_format=disk_format)
    if as_json:
        emit_json(image.summary())
    else:
        typer.echo(f"{image.ref} imported (unverified) {image.disk_digest}\n{image.path}")


@app.command()
def images(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """List stored images."""
    rows = [image.summary() for image in open_store(store).images()]
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("REF", "VERIFIED", "FORMAT", "SIZE", "IMAGE", box=None)
    for row in rows:
        table.add_row(
            row["ref"],
            row["verification"],
            row["format"],
            human_size(row["size"]),
            row["image"][:19],
        )
    Console().print(table)


@app.command()
def inspect(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] or manifest digest.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an image's manifest and provenance."""
    image = open_store(store).image(ref)
    record = {**image.summary(), "manifest": image.manifest, "provenance": image.provenance}
    if as_json:
        emit_json(record)
        return
    config = image.provenance
    verification = config.get("verification", {})
    source = config.get("source", {})
    lines = [
        f"ref:          {image.ref}",
        f"manifest:     {image.digest}",
        f"image:        {image.disk_digest} ({image.format}, {human_size(image.disk.size)})",
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
        lines.append(f"layer {number}:      {disk.digest} ({human_size(disk.size)})")
    for number, step in enumerate(config.get("steps", []), 1):
        lines.append(f"step {number}:       {json.dumps(step.get('step'), sort_keys=True)}")
    typer.echo("\n".join(lines))


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] to untag.")], store: StoreOption = None
) -> None:
    """Remove a ref (its blobs go at the next gc)."""
    descriptor = open_store(store).remove(ref)
    typer.echo(f"untagged {ref} ({descriptor.digest}); run 'imagekit gc' to free space")


@app.command()
def gc(
    store: StoreOption = None,
    partial: Annotated[bool, typer.Option(help="Also drop resumable partial downloads.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would go.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove unreferenced blobs and stale temporary files."""
    report = open_store(store).gc(remove_partial=partial, dry_run=dry_run)
    if as_json:
        emit_json(
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
        f"{human_size(report.freed_bytes)}"
    )


@app.command()
def fsck(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Rehash every blob and check every ref; exit 6 when anything is wrong."""
    report = open_store(store).fsck()
    if as_json:
        emit_json(
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
            f"checked {report.blobs_checked} blob(s), {human_size(report.bytes_checked)}: "
            + ("ok" if report.ok else f"{len(report.problems)} problem(s)")
        )
    if not report.ok:
        raise typer.Exit(StoreError.exit_code)


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
    image = open_store(store).image(ref)
    with progress_display(True) as progress:
        path = image.export(
            output,
            disk_format=disk_format,
            compress=compress,
            sparse=sparse,
            link=link,
            progress=progress,
        )
    typer.echo(f"{image.ref} -> {path}")
