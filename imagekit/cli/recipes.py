"""Commands about recipes and evidence: recipes, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import imagekit
from imagekit.cli.app import (
    JsonOption,
    app,
    emit_json,
)

SchemaOption = Annotated[
    bool, typer.Option("--schema", help="Print the JSON Schema of recipe files instead.")
]


@app.command()
def recipes(as_json: JsonOption = False, schema: SchemaOption = False) -> None:
    """List the recipes imagekit can find, with their versions and verification level."""
    from imagekit.recipe import recipe_json_schema, recipe_summaries

    if schema:
        emit_json(recipe_json_schema())
        return
    rows = recipe_summaries()
    if as_json:
        emit_json(rows)
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
        shadows = f" (shadows {row['shadows']})" if row["shadows"] else ""
        typer.echo(
            f"{row['name']:<{width}} {row['level'] or '-':<18} {versions:<19} {row['description']}"
            + shadows
        )


@app.command()
def verify(
    file: Annotated[Path | None, typer.Argument(help="The downloaded image to check.")] = None,
    checksum: Annotated[Path, typer.Option(help="The checksum file (CHECKSUM, SHA256SUMS).")] = ...,  # type: ignore[assignment]
    signature: Annotated[
        Path | None, typer.Option(help="Detached signature of the checksum file.")
    ] = None,
    key: Annotated[
        list[Path],
        typer.Option(help="The publisher's OpenPGP public key (repeatable; required)."),
    ] = [],  # noqa: B006
    name: Annotated[
        str | None, typer.Option(help="File name to look up (default: FILE's name).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a checksum file's signature and, given FILE, the file against it.

    Without --key nothing can be verified, so it fails (exit 4) rather than print OK.
    """
    result = imagekit.verify_local(
        checksum, signature=signature, keys=key, file=file, filename=name
    )
    if as_json:
        emit_json(result)
        return
    typer.echo(f"signer: {result['signer']}")
    if file is None:
        for entry in result["entries"]:
            size = f" {entry['size']} bytes" if entry["size"] is not None else ""
            typer.echo(f"{entry['algorithm']} {entry['digest']} {entry['filename']}{size}")
    else:
        typer.echo(f"{file}: OK ({result['match']['algorithm']} {result['match']['digest']})")
