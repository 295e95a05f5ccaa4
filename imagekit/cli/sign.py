"""Commands for signatures: ``key generate`` and ``sign`` (cosign's key-based format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import imagekit
from imagekit.cli.app import JsonOption, StoreOption, app, emit_json, open_store
from imagekit.cli.registry import InsecureOption

key_app = typer.Typer(help="Signing keys (ECDSA P-256 PEM, as cosign and openssl use).")
app.add_typer(key_app, name="key", no_args_is_help=True)


@key_app.command("generate")
def generate(
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Path prefix: writes PREFIX.key (0600) and PREFIX.pub."
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Make a key pair; the passphrase from $IMAGEKIT_KEY_PASSPHRASE, else asked (empty: none)."""
    files = imagekit.Store.generate_key(output)
    if as_json:
        emit_json(
            {
                "private": str(files.private),
                "public": str(files.public),
                "fingerprint": files.fingerprint,
            }
        )
        return
    typer.echo(f"{files.private} (private)\n{files.public} (public)\n{files.fingerprint}")


@app.command()
def sign(
    target: Annotated[
        str, typer.Argument(help="Stored image NAME[:TAG] or digest, or oci://HOST/REPO:TAG.")
    ],
    key: Annotated[Path, typer.Option("--key", help="EC P-256 private key (PEM).")],
    reference: Annotated[
        str | None,
        typer.Option(
            help="The docker-reference to sign for, e.g. registry.lan/prod/web (default: the "
            "image's name; for oci:// its HOST/REPO)."
        ),
    ] = None,
    store: StoreOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Sign an image, cosign's way: beside it in the store (tag NAME:sha256-<hex>.sig, which
    push carries), or in the registry for oci://."""
    signature = open_store(store).sign(target, key, reference=reference, insecure=insecure)
    if as_json:
        emit_json(signature.to_json())
        return
    typer.echo(
        f"signed {signature.digest} as {signature.reference} with key {signature.signer}\n"
        f"{signature.ref}"
    )
