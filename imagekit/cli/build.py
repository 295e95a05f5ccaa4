"""Commands that make layers: build and customize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imagekit.cli.app import (
    ConnectionsOption,
    JsonOption,
    StoreOption,
    app,
    emit_json,
    network,
    note_shadowing,
    open_store,
    progress_display,
)
from imagekit.errors import RecipeError


@app.command()
def build(
    target: Annotated[
        str | None, typer.Argument(help="Recipe file, or bundled recipe NAME[:VERSION].")
    ] = None,
    store: StoreOption = None,
    all_in: Annotated[
        Path | None,
        typer.Option(
            "--all", help="Build every recipe of this folder (nightly jobs).", metavar="DIR"
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="With --all: builds at once.")] = 1,
    push: Annotated[
        str | None,
        typer.Option("--push", help="With --all: push what is built to oci://HOST/REPO."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="With --all: write the JSON report here.")
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="With --all: write JUnit XML here.")
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Re-check upstream metadata now.")
    ] = False,
    tag: Annotated[
        str | None, typer.Option(help="Tag as NAME:TAG instead of name:version.")
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(help="Mirror for downloaded bases (default as for pull).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer.")] = False,
    sign_key: Annotated[
        Path | None, typer.Option("--sign-key", help="Sign the result with this PEM key.")
    ] = None,
    cache_from: Annotated[
        str | None,
        typer.Option("--cache-from", help="Look layers up in this registry: oci://HOST/REPO."),
    ] = None,
    cache_to: Annotated[
        str | None,
        typer.Option("--cache-to", help="Publish every layer to this registry: oci://HOST/REPO."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain http to a registry off loopback.")
    ] = False,
    connections: ConnectionsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a recipe: its base, then one cached qcow2 layer per customize step.

    With --all DIR, build every recipe of DIR that changed since its last build, in parallel
    (-j), and report each (docs/nightly.md); the exit code is 0 only if all passed.
    """
    if all_in is not None:
        if target is not None or tag or cache_from or cache_to:
            raise RecipeError(
                "--all builds a folder: give no RECIPE, --tag, --cache-from or --cache-to with it"
            )
        from imagekit.cli.nightly import Outputs, build_folder
        from imagekit.nightly import NightlyOptions

        options = NightlyOptions(
            jobs=jobs,
            push=push,
            sign_key=sign_key,
            use_cache=not no_cache,
            insecure=insecure,
            network=network(connections, mirror=mirror, refresh=refresh),
        )
        outputs = Outputs(report, junit, as_json)
        raise typer.Exit(build_folder(open_store(store), all_in, options, outputs))
    if target is None:
        raise RecipeError("give a RECIPE to build, or --all DIR")
    if push or report or junit or jobs != 1:
        raise RecipeError("-j, --push, --report and --junit go with --all DIR")
    note_shadowing(target)
    with progress_display(not as_json) as progress:
        result = open_store(store).build(
            target,
            tag=tag,
            use_cache=not no_cache,
            progress=progress,
            sign_key=sign_key,
            cache_from=cache_from,
            cache_to=cache_to,
            insecure=insecure,
            **network(connections, mirror=mirror, refresh=refresh),
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
    table = _step_from_arguments(ctx.args)
    with progress_display(not as_json) as progress:
        result = open_store(store).customize(ref, table, tag=tag, progress=progress)
    _print_build(result, as_json)


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
            table[spec.name] = _flag_value(flag, inline) if has_value else True
            continue
        value = inline if has_value else next(words, None)
        if value is None:
            raise RecipeError(f"{flag} needs a value ({spec.metavar})")
        if spec.kind is ArgKind.TEXT:
            table[spec.name] = value
        else:
            repeated.setdefault(spec.name, []).append(value)
    table.update(repeated)
    if not any(value is not False for value in table.values()):
        raise RecipeError(
            "give at least one operation, e.g. --hostname NAME (see docs/customize.md)"
        )
    return table


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _flag_value(flag: str, text: str) -> bool:
    """``--network=no``: a flag's explicit value, which must say true or false."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise RecipeError(f"{flag}={text!r}: give {flag} alone, or {flag}=true|yes|1 or =false|no|0")


def _print_build(result: Any, as_json: bool) -> None:
    image = result.image
    if as_json:
        emit_json(
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
        note = f" ({report.note})" if report.note else ""
        typer.echo(f"{state:>6} {report.seconds:7.1f}s {report.digest[:19]} {report.name}{note}")
    for user, password in result.generated_passwords.items():
        typer.echo(f"generated password for {user}: {password}")
    typer.echo(f"{image.ref} {image.disk_digest}\n{image.path}")
