"""Commands that talk to OCI registries: push, prune and login (``pull oci://`` is in
images.py)."""

from __future__ import annotations

import sys
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
from imagekit.cli.images import KeepLastOption, OlderThanOption, parse_older_than
from imagekit.errors import RecipeError

InsecureOption = Annotated[
    bool,
    typer.Option(help="Allow plain http to a registry that is not on loopback (127.0.0.1)."),
]


@app.command()
def push(
    refs: Annotated[
        list[str],
        typer.Argument(
            help="Stored image NAME[:TAG] or digest; several (REF[=ARCH], one per "
            "architecture) push one multi-arch index.",
            metavar="REF...",
            show_default=False,
        ),
    ],
    target: Annotated[
        str, typer.Argument(help="oci://HOST[:PORT]/REPO[:TAG] (default tag: REF's).")
    ],
    store: StoreOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Copy a stored image, and the base it was built on, to an OCI registry.

    With several images (e.g. web:1-amd64 web:1-arm64=arm64), each goes up by digest and the
    tag names an OCI index with one manifest per architecture; pull picks the host's.
    """
    multiarch = len(refs) > 1 or any("=" in ref for ref in refs)
    with progress_display(not as_json) as progress:
        if multiarch:
            index = open_store(store).push_index(refs, target, insecure=insecure, progress=progress)
        else:
            report = open_store(store).push(refs[0], target, insecure=insecure, progress=progress)
    if multiarch:
        if as_json:
            emit_json(index.to_json())
            return
        for entry, pushed in index.images:
            typer.echo(
                f"pushed {entry.ref} ({entry.arch}, {entry.digest}): "
                f"{len(pushed.uploaded)} blob(s) uploaded ({human_size(pushed.uploaded_bytes)}), "
                f"{len(pushed.mounted)} mounted, {len(pushed.skipped)} already there"
            )
        typer.echo(f"pushed index {index.target} ({index.digest}): {len(index.images)} images")
        return
    if as_json:
        emit_json(report.to_json())
        return
    typer.echo(
        f"pushed {refs[0]} to {report.target} ({report.digest}): {len(report.uploaded)} blob(s) "
        f"uploaded ({human_size(report.uploaded_bytes)}), {len(report.mounted)} mounted, "
        f"{len(report.skipped)} already there"
    )


@app.command()
def prune(
    target: Annotated[str, typer.Argument(help="The repository: oci://HOST[:PORT]/REPO.")],
    keep_last: KeepLastOption = None,
    older_than: OlderThanOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    store: StoreOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete old images from a registry repository by digest, keeping the N newest."""
    if keep_last is None:
        raise RecipeError("prune needs --keep-last N (the N newest images stay)")
    report = open_store(store).prune(
        target,
        keep_last=keep_last,
        older_than=parse_older_than(older_than),
        dry_run=dry_run,
        insecure=insecure,
    )
    if as_json:
        emit_json(report.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    for digest, tags in report.removed.items():
        typer.echo(f"{verb} {digest} ({', '.join(sorted(tags))})")
    for tag, why in sorted(report.kept.items()):
        typer.echo(f"kept {tag}: {why}")
    typer.echo(
        f"{verb} {len(report.removed)} image(s) and {len(report.removed_signatures)} "
        f"signature(s) in {report.repository}"
        + (
            ""
            if dry_run or not report.removed
            else "; the registry's own garbage collection frees their blobs"
        )
    )


@app.command()
def login(
    host: Annotated[str, typer.Argument(help="Registry HOST[:PORT].")],
    username: Annotated[str | None, typer.Option("--username", "-u", help="User name.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    insecure: InsecureOption = False,
) -> None:
    """Check a registry login and save it ($REGISTRY_AUTH_FILE or containers auth.json, 0600)."""
    from imagekit.store import login as save_login

    if password_stdin and not username:
        raise RecipeError("--password-stdin needs --username (stdin holds the password)")
    user = username or typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True)
    else:
        raise RecipeError("no terminal to ask the password on: pass it with --password-stdin")
    if not password:
        raise RecipeError("the password is empty: give one on stdin or at the prompt")
    path = save_login(host, user, password, insecure=insecure)
    typer.echo(f"login to {host} succeeded; credentials saved in {path}")
