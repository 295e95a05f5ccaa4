"""Commands from stored image to running VM: seed (a NoCloud seed ISO) and boot (a boot check)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import imagekit
from imagekit.cli.app import JsonOption, StoreOption, app, emit_json, open_store, progress_display
from imagekit.errors import RecipeError

if TYPE_CHECKING:  # imagekit.boot loads qemu's supervisor and pycdlib: only when a command runs
    from imagekit.boot import SeedSpec

PublicKeys = Annotated[
    list[Path] | None,
    typer.Option("--ssh-key", help="OpenSSH public key file to authorize (repeatable)."),
]
# --cloud-init KEY=VALUE,... : the seed options by name; repeatable keys may be given again.
_CLOUD_INIT_KEYS = ("hostname", "user", "ssh-key", "package", "user-data", "network-config")


@app.command()
def seed(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the seed ISO.")],
    hostname: Annotated[str | None, typer.Option(help="The guest's host name.")] = None,
    user: Annotated[
        str | None,
        typer.Option(help="Create this user with the keys and sudo (default: the image's own)."),
    ] = None,
    ssh_key: PublicKeys = None,
    package: Annotated[
        list[str] | None, typer.Option(help="Package to install at first boot (repeatable).")
    ] = None,
    runcmd: Annotated[
        list[str] | None, typer.Option(help="Command to run at first boot (repeatable).")
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option(help="A #cloud-config of yours; the options above extend it.")
    ] = None,
    network_config: Annotated[
        Path | None, typer.Option(help="A cloud-init network-config (version 1 or 2).")
    ] = None,
    instance_id: Annotated[
        str | None, typer.Option(help="instance-id (default: derived from the content).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a cloud-init NoCloud seed ISO (label cidata) for a cloud image's first boot."""
    from imagekit.boot import SeedSpec

    spec = SeedSpec(
        hostname=hostname,
        user=user,
        ssh_keys=tuple(ssh_key or ()),
        packages=tuple(package or ()),
        runcmd=tuple(runcmd or ()),
        user_data=user_data,
        network_config=network_config,
        instance_id=instance_id,
    )
    report = imagekit.Store.seed(output, spec)
    if as_json:
        emit_json(report.to_json())
        return
    typer.echo(
        f"{report.path}: {report.size} bytes, instance-id {report.instance_id}, "
        f"files {' '.join(report.files)}"
    )


@app.command()
def boot(
    ref: Annotated[str, typer.Argument(help="Stored image NAME[:TAG] or digest.")],
    store: StoreOption = None,
    seed_iso: Annotated[
        Path | None, typer.Option("--seed", help="A NoCloud seed ISO to attach as a CD-ROM.")
    ] = None,
    cloud_init: Annotated[
        str | None,
        typer.Option(
            help="Make the seed for this boot: hostname=H,user=NAME,ssh-key=FILE,package=P,"
            "user-data=FILE,network-config=FILE, and seedless to serve it over HTTP (SMBIOS)."
        ),
    ] = None,
    marker: Annotated[
        str | None,
        typer.Option(help="Console text that means ready (default: cloud-init done, a login)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before the check fails.")] = 300.0,
    ssh: Annotated[
        str | None, typer.Option(help="Ready when this command exits 0 over SSH instead.")
    ] = None,
    ssh_user: Annotated[str | None, typer.Option(help="Log in as this user (--ssh).")] = None,
    identity: Annotated[
        Path | None,
        typer.Option(help="Private key for --ssh (default: one made for this boot)."),
    ] = None,
    console: Annotated[
        bool,
        typer.Option("--console", help="The serial console on this terminal (Ctrl-a x quits)."),
    ] = False,
    memory: Annotated[int, typer.Option(help="Guest memory in MiB.")] = 1024,
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 1,
    inactivity: Annotated[
        float,
        typer.Option(help="Fail when console and disk are idle this long (0: never)."),
    ] = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Boot a stored image on a throwaway overlay and wait until it is ready."""
    from imagekit.boot import BootOptions

    spec, seedless = _cloud_init(cloud_init) if cloud_init else (None, False)
    options = BootOptions(
        seed=seed_iso,
        cloud_init=spec,
        seedless=seedless,
        marker=marker,
        timeout=timeout,
        ssh=ssh,
        ssh_user=ssh_user,
        ssh_key=identity,
        console=console,
        memory_mib=memory,
        vcpus=vcpus,
        inactivity=inactivity or None,
    )
    with progress_display(not (as_json or console)) as progress:
        report = open_store(store).boot(ref, options, progress=progress)
    if as_json:
        emit_json(report.to_json())
        return
    if report.ssh_output:
        typer.echo(report.ssh_output, nl=False)
    seen = f": {report.marker!r}" if report.marker else ""
    typer.echo(f"ready after {report.seconds:g} s ({report.accel}, {report.reason}){seen}")
    typer.echo(f"console log: {report.console_log}")


def _cloud_init(text: str) -> tuple[SeedSpec, bool]:
    """``hostname=web1,user=alice,ssh-key=~/.ssh/id.pub,seedless`` as a seed spec."""
    from imagekit.boot import SeedSpec

    values: dict[str, list[str]] = {}
    seedless = False
    for item in filter(None, text.split(",")):
        key, has_value, value = item.partition("=")
        if key == "seedless" and value in ("", "on", "yes", "true"):
            seedless = True
            continue
        if key not in _CLOUD_INIT_KEYS or not has_value or not value:
            raise RecipeError(
                f"--cloud-init: {item!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(_CLOUD_INIT_KEYS)}, or seedless"
            )
        values.setdefault(key, []).append(value)

    def one(key: str) -> str | None:
        given = values.get(key, [])
        if len(given) > 1:
            raise RecipeError(f"--cloud-init: {key} is given {len(given)} times")
        return given[0] if given else None

    def path(key: str) -> Path | None:
        value = one(key)
        return Path(value).expanduser() if value else None

    spec = SeedSpec(
        hostname=one("hostname"),
        user=one("user"),
        ssh_keys=tuple(Path(p).expanduser() for p in values.get("ssh-key", [])),
        packages=tuple(values.get("package", [])),
        user_data=path("user-data"),
        network_config=path("network-config"),
    )
    return spec, seedless
