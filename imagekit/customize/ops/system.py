"""System settings and guest commands: install, hostname, timezone, run_command."""

from __future__ import annotations

import re
import shlex

from imagekit.customize.context import Context
from imagekit.customize.spec import ArgKind, OperationSpec, check_command, each
from imagekit.errors import CustomizeError

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
PACKAGE = re.compile(r"[A-Za-z0-9_.+:@=<>~*][A-Za-z0-9_.+:@=<>~*/-]*")

INSTALL_COMMANDS = {
    "dnf": "dnf -y install {}",
    "yum": "yum -y install {}",
    "apt": "apt-get -q -y update && DEBIAN_FRONTEND=noninteractive apt-get -q -y "
    "-o Dpkg::Options::=--force-confnew install {}",
    "zypper": "zypper -n install -l {}",
    "apk": "apk update && apk add {}",
    "pacman": "pacman -Sy --noconfirm {}",
}


def _check_hostname(value: str) -> None:
    if not HOSTNAME.fullmatch(value):
        raise ValueError("not a valid hostname (letters, digits, '-' and '.', at most 253)")


def _check_zone(value: str) -> None:
    if not ZONE.fullmatch(value):
        raise ValueError("expected a zone name like Europe/Berlin")


def _check_package(value: str) -> None:
    if not PACKAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a package name")


def _apply_hostname(ctx: Context, values: tuple[str, ...]) -> None:
    name = values[0]
    ctx.write("/etc/hostname", name + "\n")
    if ctx.g.is_file("/etc/sysconfig/network"):  # RHEL 6 and older read it from here
        lines = ctx.read("/etc/sysconfig/network").splitlines()
        lines = [ln for ln in lines if not ln.startswith("HOSTNAME=")] + [f"HOSTNAME={name}"]
        ctx.write("/etc/sysconfig/network", "\n".join(lines) + "\n")


def _apply_timezone(ctx: Context, values: tuple[str, ...]) -> None:
    zone = values[0]
    target = f"/usr/share/zoneinfo/{zone}"
    if not ctx.g.is_file(target, followsymlinks=True):
        raise CustomizeError(
            f"timezone: the guest has no {target}; use a name like Europe/Berlin and make sure "
            "tzdata is installed in the image"
        )
    ctx.g.rm_f("/etc/localtime")
    ctx.g.ln_s(target, "/etc/localtime")
    if ctx.g.is_file("/etc/timezone"):  # Debian and Ubuntu keep the name here too
        ctx.write("/etc/timezone", zone + "\n")


def _sh(ctx: Context, command: str, what: str) -> str:
    try:
        output = str(ctx.g.sh(command))
    except RuntimeError as e:
        raise CustomizeError(f"{what} failed in the guest: {e}") from e
    ctx.result.command_output.append(output)
    return output


def _run_command(ctx: Context, command: str) -> None:
    _sh(ctx, command, f"run_command {command!r}")


def _apply_install(ctx: Context, packages: tuple[str, ...]) -> None:
    if not ctx.g.get_network():
        raise CustomizeError(
            "install needs guest network, but the appliance was launched without it: launch "
            "with network=needs_network(step), on a host that reaches the guest's mirrors"
        )
    manager = ctx.guest_os.package_management
    if manager not in INSTALL_COMMANDS:
        raise CustomizeError(
            f"install: imagekit cannot drive the guest's package manager ({manager}); "
            "use run_command instead"
        )
    command = INSTALL_COMMANDS[manager].format(" ".join(map(shlex.quote, packages)))
    _sh(ctx, command, f"install with {manager} (check that the host has network)")


# fmt: off
OPERATIONS = (
    OperationSpec("install", ArgKind.CSV, "PKG,PKG..", "install packages with the guest's package "
        "manager (dnf, yum, apt, zypper, apk, pacman)", _apply_install, check=_check_package,
        network=True),
    OperationSpec("hostname", ArgKind.TEXT, "HOSTNAME", "set /etc/hostname", _apply_hostname,
        check=_check_hostname),
    OperationSpec("timezone", ArgKind.TEXT, "ZONE", "link /etc/localtime to "
        "/usr/share/zoneinfo/ZONE", _apply_timezone, check=_check_zone),
    OperationSpec("run_command", ArgKind.LIST, "'CMD+ARGS'", "run a command with the guest's "
        "/bin/sh, chrooted into the guest; its output is returned", each(_run_command),
        check=check_command),
)
# fmt: on
