"""Commands on stored images: pull, import, images, inspect, rm, gc, fsck, export, roots."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

import imagekit
from imagekit.cli.app import (
    ConnectionsOption,
    JsonOption,
    StoreOption,
    app,
    emit_json,
    human_size,
    network,
    note_shadowing,
    open_store,
    progress_display,
)
from imagekit.errors import StoreError
from imagekit.oci.retention import parse_age


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
    connections: ConnectionsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fetch an image, prove it genuine, and store it."""
    note_shadowing(target)
    with progress_display(not as_json) as progress:
        image = open_store(store).pull(
            target,
            arch=arch,
            tag=tag,
            insecure=insecure,
            progress=progress,
            **network(
                connections,
                mirror=mirror,
                refresh=refresh,
                offline=offline,
                allow_loopback_http=allow_loopback_http,
            ),
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


def _roots_by_image(store: imagekit.Store) -> dict[str, list[dict[str, Any]]]:
    """Each image's roots (outside files that back onto it), by manifest digest."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for root in store.roots():
        found[root.manifest].append({"path": str(root.path), "kind": root.kind})
    return found


@app.command()
def images(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """List stored images; USED BY counts the outside files (export --link) that need one."""
    opened = open_store(store)
    used_by = _roots_by_image(opened)
    rows = [{**row, "roots": used_by[row["digest"]]} for row in opened.summaries()]
    if as_json:
        emit_json(rows)
        return
    # Plain columns: rich's table takes seconds to lay out thousands of rows.
    table = [("REF", "VERIFIED", "FORMAT", "SIZE", "IMAGE", "USED BY")]
    for row in rows:
        table.append(
            (
                row["ref"],
                row["verification"],
                row["format"],
                human_size(row["size"]),
                row["image"][:19],
                f"{len(row['roots'])} file(s)" if row["roots"] else "",
            )
        )
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    typer.echo(
        "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()
            for cells in table
        )
    )


@app.command()
def inspect(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] or manifest digest.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an image's manifest and provenance."""
    opened = open_store(store)
    image = opened.image(ref)
    used_by = _roots_by_image(opened)[image.digest]
    signatures = opened.signatures(image.digest)
    record = {
        **image.summary(),
        "manifest": image.manifest,
        "provenance": image.provenance,
        "roots": used_by,
        "signatures": [signature.to_json() for signature in signatures],
    }
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
        *[
            f"signed:       by {s.signer} as {s.reference}"
            if s.signer
            else f"signature:    {s.problem}"
            for s in signatures
        ],
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
    for root in used_by:
        lines.append(f"used by:      {root['path']} ({root['kind']})")
    typer.echo("\n".join(lines))


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="NAME[:TAG] to untag.")], store: StoreOption = None
) -> None:
    """Remove a ref (its blobs go at the next gc, unless a root still needs them)."""
    opened = open_store(store)
    descriptor = opened.remove(ref)
    used_by = _roots_by_image(opened)[descriptor.digest]
    if not used_by:
        typer.echo(f"untagged {ref} ({descriptor.digest}); run 'imagekit gc' to free space")
        return
    typer.echo(
        f"untagged {ref} ({descriptor.digest}); its blobs stay while {len(used_by)} file(s) "
        "outside the store back onto them (gc frees them once those are deleted):"
    )
    for root in used_by:
        typer.echo(f"  {root['path']} ({root['kind']})")


KeepLastOption = Annotated[
    int | None,
    typer.Option(
        "--keep-last",
        min=1,
        help="Keep the N newest images of each name (by the creation time they record); "
        "untag the others first, except those a kept image is built on.",
    ),
]
OlderThanOption = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="With --keep-last: remove only images made longer ago than this (30d, 12h, 2w).",
    ),
]


def parse_older_than(text: str | None) -> timedelta | None:
    return None if text is None else parse_age(text)


@app.command()
def gc(
    store: StoreOption = None,
    partial: Annotated[bool, typer.Option(help="Also drop resumable partial downloads.")] = False,
    keep_last: KeepLastOption = None,
    older_than: OlderThanOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would go.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove unreferenced blobs, stale temporary files and lock files nobody holds, and drop
    roots whose file is gone; with --keep-last N, old tags of each image name first."""
    report = open_store(store).gc(
        remove_partial=partial,
        dry_run=dry_run,
        keep_last=keep_last,
        older_than=parse_older_than(older_than),
    )
    if as_json:
        emit_json(
            {
                "removed_refs": report.removed_refs,
                "kept_refs": report.kept_refs,
                "removed_signatures": report.removed_signatures,
                "removed_blobs": report.removed_blobs,
                "removed_temp": report.removed_temp,
                "removed_locks": report.removed_locks,
                "dropped_roots": report.dropped_roots,
                "freed_bytes": report.freed_bytes,
                "dry_run": dry_run,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for ref in report.removed_refs:
        typer.echo(f"{'would untag' if dry_run else 'untagged'} {ref}")
    if keep_last is not None:
        for ref, why in sorted(report.kept_refs.items()):
            typer.echo(f"kept {ref}: {why}")
    for path, reason in report.dropped_roots.items():
        typer.echo(f"{'would drop' if dry_run else 'dropped'} root {path}: {reason}")
    typer.echo(
        f"{verb} {len(report.removed_blobs)} blob(s), {len(report.removed_temp)} temp file(s), "
        f"{len(report.removed_locks)} lock file(s), {human_size(report.freed_bytes)}"
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
    output: Annotated[
        str,
        typer.Option(
            "-o", "--output", help="File, block device, character device or FIFO; - for stdout."
        ),
    ],
    store: StoreOption = None,
    disk_format: Annotated[
        str, typer.Option("--format", help="qcow2, raw, vmdk, vdi or vhdx.")
    ] = "qcow2",
    compress: Annotated[bool, typer.Option(help="Compress (qcow2 only).")] = False,
    sparse: Annotated[bool, typer.Option(help="Keep zeros unallocated.")] = True,
    link: Annotated[
        bool, typer.Option(help="Thin overlay backed by the store (kept by gc while it exists).")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Replace an existing file (or a symlink to one).")
    ] = False,
) -> None:
    """Flatten an image's layers into one standalone file (or --link a thin overlay)."""
    image = open_store(store).image(ref)
    to_stdout = output == "-"
    with progress_display(not to_stdout) as progress:
        path = image.export(
            output,
            disk_format=disk_format,
            compress=compress,
            sparse=sparse,
            link=link,
            force=force,
            progress=progress,
        )
    # On stderr: stdout may be what the image is streamed into (-o -, -o /dev/stdout).
    typer.echo(f"{image.ref} -> {'stdout' if to_stdout else path}", err=True)


@app.command("roots")
def roots_(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """List the files outside the store that back onto its images (export --link overlays)."""
    opened = open_store(store)
    rows: list[dict[str, Any]] = [
        {
            "path": str(root.path),
            "kind": root.kind,
            "ref": root.ref,
            "manifest": root.manifest,
            "blobs": list(root.blobs),
            "created": root.created,
            "command": root.command,
            "stale": opened.root_stale_reason(root),
        }
        for root in opened.roots()
    ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:  # one line each, never cut: the path is what matters
        state = f"stale ({row['stale']}): the next gc drops it" if row["stale"] else "in use"
        typer.echo(
            f"{row['path']} ({row['kind']}) -> {row['ref'] or '-'} {row['manifest'][:19]}, "
            f"since {row['created']}: {state}"
        )
