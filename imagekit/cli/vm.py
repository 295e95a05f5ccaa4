"""Commands from stored image to running VM: seed (a NoCloud seed ISO), boot (a boot check),
provision and vms (libvirt VMs)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import imagekit
from imagekit.cli.app import JsonOption, StoreOption, app, emit_json, open_store, progress_display
from imagekit.errors import RecipeError

if TYPE_CHECKING:  # imagekit.boot loads qemu's supervisor and pycdlib: only when a command runs
    from imagekit.boot import ProvisionReport, SeedSpec, VmInfo

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


ConnectOption = Annotated[
    str | None,
    typer.Option(
        "--connect", help="libvirt URI (default: libvirt's own, qemu:///system for root)."
    ),
]


@app.command()
def provision(
    ref: Annotated[str | None, typer.Argument(help="Stored image NAME[:TAG] or digest.")] = None,
    name: Annotated[str | None, typer.Option(help="The VM's name (its libvirt domain).")] = None,
    store: StoreOption = None,
    seed_iso: Annotated[
        Path | None, typer.Option("--seed", help="A NoCloud seed ISO, copied beside the disk.")
    ] = None,
    memory: Annotated[int, typer.Option(help="Guest memory in MiB.")] = 1024,
    vcpus: Annotated[int, typer.Option(help="Guest vCPUs.")] = 1,
    network: Annotated[
        str | None,
        typer.Option(
            help="network=NAME, bridge=NAME, user or none (default: network=default on "
            "qemu:///system, user on a session)."
        ),
    ] = None,
    connect: ConnectOption = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the VM's files (default: /var/lib/libvirt/images on "
            "qemu:///system, ~/.local/share/libvirt/images on a session)."
        ),
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="A standalone copy of the disk, not an overlay.")
    ] = False,
    print_only: Annotated[
        bool,
        typer.Option("--print", help="Print the equivalent virt-install line; make nothing."),
    ] = False,
    remove: Annotated[
        str | None,
        typer.Option(help="Stop, undefine and delete this VM imagekit made.", metavar="VM"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Define and start a libvirt VM on a stored image (an overlay the store keeps alive)."""
    from imagekit.boot import ProvisionOptions

    if remove is not None:
        if ref is not None or name is not None:
            raise RecipeError("--remove VM takes no REF and no --name")
        removed = open_store(store).unprovision(remove, connect=connect)
        if as_json:
            emit_json(removed.to_json())
            return
        files = ", ".join(str(f) for f in removed.files) or "no files"
        root = "; its root is dropped" if removed.root else ""
        typer.echo(f"removed {removed.name}: domain undefined, deleted {files}{root}")
        return
    if ref is None or name is None:
        raise RecipeError("give REF and --name VM (or --remove VM)")
    options = ProvisionOptions(
        name=name,
        seed=seed_iso,
        memory_mib=memory,
        vcpus=vcpus,
        network=network,
        connect=connect,
        pool=pool,
        copy=copy,
        print_only=print_only,
    )
    with progress_display(not as_json) as progress:
        report = open_store(store).provision(ref, options, progress=progress)
    if as_json:
        emit_json(report.to_json())
    elif print_only:
        _print_line(report, ref)
    else:
        _echo_provisioned(report)


def _print_line(report: ProvisionReport, ref: str) -> None:
    """The virt-install line on stdout; on stderr, what it expects to find."""
    typer.echo(shlex.join(report.virt_install))
    disk = report.record.disk
    make = f"imagekit export {ref} -o {disk}" + ("" if report.record.mode == "copy" else " --link")
    typer.echo(
        f"# it expects the disk {disk}: `{make}` makes it; imagekit provision without --print "
        "makes it, defines the VM and lists it in imagekit vms",
        err=True,
    )


def _echo_provisioned(report: ProvisionReport) -> None:
    record = report.record
    typer.echo(f"{report.name}: {report.state} on {report.uri} ({report.accel})")
    image = record.ref or record.manifest
    kept = "; a gc root keeps its backing chain" if report.root else ""
    made = "overlay on" if record.mode == "overlay" else "copy of"
    typer.echo(f"disk: {record.disk} ({made} {image}{kept})")
    if record.seed:
        typer.echo(f"seed: {record.seed}")
    typer.echo(f"console: virsh -c {report.uri} console {report.name} (log: {record.console})")


@app.command()
def vms(
    store: StoreOption = None, connect: ConnectOption = None, as_json: JsonOption = False
) -> None:
    """List the libvirt VMs imagekit provisioned: state, image, disk, and the root keeping it."""
    found = open_store(store).vms(connect=connect)
    if as_json:
        emit_json([vm.to_json() for vm in found])
        return
    rows = [("NAME", "STATE", "IMAGE", "ROOT", "DISK"), *(_vm_row(vm) for vm in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:  # the disk last and never cut: the path is what matters
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[4]]))


def _vm_row(vm: VmInfo) -> tuple[str, str, str, str, str]:
    image = vm.record.ref or vm.record.manifest[:19]
    return (vm.name, vm.state, image, vm.root_status, str(vm.record.disk))


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
