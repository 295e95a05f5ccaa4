"""Reading an image's traits from its mounted guest: one reader per kind of check.

Everything goes through the libguestfs handle of one read-only launch. Paths are resolved in
the guest (``realpath`` runs chrooted), so an absolute symlink such as Fedora's
``/etc/firewalld/firewalld.conf`` leads to the guest's file, never the appliance's. A reader
returns ``None`` as the value when the image has nothing to read (no such file, database or
mount point): the check is then ``missing``, not ``differ``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagekit.check.sshd import sshd_setting

MAX_TEXT = 1 << 20  # configuration files are small; read no more than this of one
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
FIREWALLD_CONF = "/etc/firewalld/firewalld.conf"
SELINUX_CONFIG = "/etc/selinux/config"
CLOUD_INIT_FILES = ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg")


@dataclass(frozen=True)
class Found:
    """What a reader found: a value (None: nothing to read) and how it was found."""

    value: str | bool | None
    detail: str = ""


class Guest:
    """One mounted guest, with what several checks share read once."""

    def __init__(self, handle: Any, root: str, mountpoints: dict[str, str]) -> None:
        self.g = handle
        self.root = root
        self.mountpoints = mountpoints

    def text(self, path: str) -> str | None:
        """A file's text, its symlinks followed inside the guest; None if it is no file."""
        try:
            real = self.g.realpath(path)
            if not self.g.is_file(real):
                return None
            if self.g.filesize(real) > MAX_TEXT:
                data = self.g.pread(real, MAX_TEXT, 0)
            else:
                data = self.g.read_file(real)
        except RuntimeError:
            return None
        return bytes(data).decode("utf-8", errors="replace")

    def exists(self, path: str) -> bool:
        try:
            return bool(self.g.exists(path))
        except RuntimeError:
            return False

    def glob(self, pattern: str) -> list[str]:
        try:
            return list(self.g.glob_expand(pattern))
        except RuntimeError:
            return []

    @functools.cached_property
    def packages(self) -> dict[str, str] | None:
        """Installed package -> version from the rpm or dpkg database; None if none is read."""
        try:
            applications = self.g.inspect_list_applications2(self.root)
        except RuntimeError:
            return None
        found = {}
        for app in applications:
            version = "-".join(v for v in (app["app2_version"], app["app2_release"]) if v)
            found[app["app2_name"]] = version
        return found or None

    @functools.cached_property
    def enabled_units(self) -> dict[str, str]:
        """Unit -> the ``*.wants``/``*.requires`` folder whose symlink enables it."""
        enabled: dict[str, str] = {}
        for base in UNIT_DIRS:
            for folder in self.glob(f"{base}/*.wants") + self.glob(f"{base}/*.requires"):
                try:
                    names = self.g.ls(folder)
                except RuntimeError:
                    continue
                for name in names:
                    enabled.setdefault(name, folder)
        return enabled

    @property
    def package_format(self) -> str:
        try:
            return str(self.g.inspect_get_package_format(self.root))
        except RuntimeError:
            return "unknown"


def read_package(guest: Guest, name: str) -> Found:
    packages = guest.packages
    if packages is None:
        return Found(None, f"no {guest.package_format} package database could be read")
    if name in packages:
        return Found("installed", f"{name} {packages[name]}")
    return Found("absent", f"not among {len(packages)} installed packages")


def read_unit(guest: Guest, name: str) -> Found:
    if "/" in name or not name:
        return Found(None, f"{name!r} is not a unit name")
    override = f"/etc/systemd/system/{name}"
    try:
        masked = guest.g.is_symlink(override) and guest.g.readlink(override) == "/dev/null"
    except RuntimeError:
        masked = False
    if masked:
        return Found("masked", f"{override} -> /dev/null")
    if name in guest.enabled_units:
        return Found("enabled", f"linked in {guest.enabled_units[name]}")
    files = [f"{folder}/{name}" for folder in UNIT_DIRS if guest.exists(f"{folder}/{name}")]
    if not files:
        return Found(None, f"no unit file {name} in {', '.join(UNIT_DIRS)}")
    return Found("disabled", f"{files[0]} is linked in no *.wants or *.requires folder")


def read_firewalld_zone(guest: Guest, name: str) -> Found:
    return _assignment(guest, FIREWALLD_CONF, "DefaultZone")


def read_selinux(guest: Guest, name: str) -> Found:
    found = _assignment(guest, SELINUX_CONFIG, "SELINUX")
    if isinstance(found.value, str):
        return Found(found.value.lower(), found.detail)
    return found


def read_root_on_lvm(guest: Guest, name: str) -> Found:
    device = guest.mountpoints.get("/", "")
    try:
        on_lvm = bool(guest.g.is_lv(device))
    except RuntimeError:
        on_lvm = False
    return Found(on_lvm, f"/ is {device or 'not mounted'}")


def read_filesystem(guest: Guest, name: str) -> Found:
    device = guest.mountpoints.get(name)
    if device is None:
        return Found(None, f"no file system is mounted on {name}")
    if device.startswith("btrfsvol:"):  # a btrfs subvolume, as inspection names it
        return Found("btrfs", device)
    try:
        return Found(str(guest.g.vfs_type(device)), device)
    except RuntimeError as exc:
        return Found(None, f"cannot read the type of {device}: {exc}")


def read_sshd(guest: Guest, name: str) -> Found:
    setting = sshd_setting(name, guest.text, guest.glob)
    if setting is None:
        return Found(None, "no /etc/ssh/sshd_config")
    if setting.value is None:
        return Found(None, f"{name} is set nowhere and has no known default")
    origin = "OpenSSH's default" if setting.origin == "default" else f"in {setting.origin}"
    return Found(setting.value, origin)


def read_cloud_init(guest: Guest, name: str) -> Found:
    packages = guest.packages or {}
    if "cloud-init" in packages:
        return Found(True, f"package cloud-init {packages['cloud-init']}")
    present = [path for path in CLOUD_INIT_FILES if guest.exists(path)]
    if present:
        return Found(True, f"{present[0]} exists")
    return Found(False, f"no cloud-init package, no {' or '.join(CLOUD_INIT_FILES)}")


def _assignment(guest: Guest, path: str, key: str) -> Found:
    """``KEY=VALUE`` in a shell-style configuration file (the last assignment wins)."""
    text = guest.text(path)
    if text is None:
        return Found(None, f"no {path}")
    value = None
    for line in text.splitlines():
        name, equals, rest = line.strip().partition("=")
        if equals and name.strip() == key:
            value = rest.strip().strip("\"'")
    if value is None:
        return Found(None, f"{key} is not set in {path}")
    return Found(value, f"{key} in {path}")


READERS: dict[str, Callable[[Guest, str], Found]] = {
    "package": read_package,
    "unit": read_unit,
    "firewalld-zone": read_firewalld_zone,
    "root-on-lvm": read_root_on_lvm,
    "filesystem": read_filesystem,
    "selinux": read_selinux,
    "sshd": read_sshd,
    "cloud-init": read_cloud_init,
}
