"""The boot check: does a stored image come up? Booted on a throwaway overlay, supervised.

The VM boots the image's top disk through a qcow2 overlay in the store's ``tmp/``, so not a
byte of a stored blob changes, with user-mode networking only (the guest's port 22 forwarded
to 127.0.0.1, nothing else listens) and the NoCloud seed, if any, as a CD-ROM. It is ready
when a marker reaches the serial console (cloud-init's "Cloud-init v. ... finished", a login
prompt, or the caller's own), or with ``ssh`` when a command run over SSH exits 0. It runs in
the installer's supervisor (:mod:`imagekit.guest.vm`): qemu never outlives the check, and a
failure carries the console's tail.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagekit.boot.cloudconfig import SeedSpec, render
from imagekit.boot.seed import iso_bytes, serve_seed, smbios_serial
from imagekit.boot.ssh import Prober, SshTarget, free_port, make_key
from imagekit.core.digest import hexpart
from imagekit.disk import qemu_img
from imagekit.errors import BootError, RecipeError
from imagekit.guest import appliance, vm
from imagekit.image import Image
from imagekit.oci.layout import Layout
from imagekit.oci.media import DISK_FORMATS
from imagekit.progress import ProgressCallback, ignore_progress

DEFAULT_MARKERS = (
    re.compile(r"Cloud-init v\. \S+ finished[^\n]*"),  # cloud-init's last stage is done
    re.compile(r"\S+ login: *$", re.MULTILINE),  # getty's prompt, which ends no line
)
FAILURE_MARKERS = ("Kernel panic - not syncing", "No bootable device")
KEPT_LOGS = 5  # console logs kept per image, newest first
DEFAULT_USER = "imagekit"  # the user a seed made for an SSH check logs in as


@dataclass(frozen=True)
class BootOptions:
    """How to boot and what counts as ready.

    ``seed`` is a NoCloud ISO of the caller's; ``cloud_init`` instead describes one made for
    this boot (served over HTTP with ``seedless``). ``marker`` replaces the default markers;
    ``ssh`` replaces markers by a command that must exit 0 over SSH, as ``ssh_user`` with
    ``ssh_key`` (private); with neither a seed nor a key, a key is made for this boot alone.
    ``console`` puts the serial console on the caller's terminal until the guest powers off.
    ``inactivity`` (None: off) fails a boot whose console and disk are both still that long.
    """

    seed: Path | None = None
    cloud_init: SeedSpec | None = None
    seedless: bool = False
    marker: str | None = None
    timeout: float = 300.0
    ssh: str | None = None
    ssh_user: str | None = None
    ssh_key: Path | None = None
    console: bool = False
    memory_mib: int = 1024
    vcpus: int = 1
    inactivity: float | None = 120.0


@dataclass(frozen=True)
class BootReport:
    """How the boot ended. ``reason``: ``marker``, ``ssh``, or ``exited`` (``console``)."""

    ref: str | None
    image: str
    disk: str
    reason: str
    marker: str | None
    seconds: float
    accel: str
    console_log: Path
    command: list[str]
    seed: str | None
    ssh_port: int
    ssh_output: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "image": self.image,
            "disk": self.disk,
            "ready": True,
            "reason": self.reason,
            "marker": self.marker,
            "seconds": self.seconds,
            "accel": self.accel,
            "console_log": str(self.console_log),
            "command": self.command,
            "seed": self.seed,
            "ssh_port": self.ssh_port,
            "ssh_output": self.ssh_output,
        }


@dataclass
class _Plan:
    """What one boot attaches: qemu arguments for the seed, the SSH target, the seed's name."""

    args: list[str]
    seed: str | None
    ssh: SshTarget | None


def boot_check(
    layout: Layout,
    image: Image,
    options: BootOptions,
    *,
    progress: ProgressCallback = ignore_progress,
) -> BootReport:
    """Boot ``image`` on a throwaway overlay until it is ready; BootError if it is not."""
    _check(options)
    accel = appliance.accel()
    workdir = layout.new_temp()
    workdir.mkdir()
    log = _console_log(layout, image)
    try:
        overlay = _overlay(layout, image, workdir)
        with ExitStack() as stack:
            port = free_port()
            plan = _plan(stack, options, workdir, port)
            argv = command(accel, options, overlay, plan.args, port)
            prober = stack.enter_context(Prober(plan.ssh).running()) if plan.ssh else None
            watch = _watch(options, log, overlay, prober)
            announce = f"booting {image.ref or image.digest} ({accel}); console: {log}"
            try:
                ran = vm.supervise(argv, accel, watch, progress=progress, announce=announce)
            except BootError as exc:
                if prober is None:
                    raise
                raise BootError(f"{exc}\nlast ssh attempt: {prober.last}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return BootReport(
        ref=image.ref,
        image=image.digest,
        disk=image.disk.digest,
        reason="exited" if ran.ready is None else ("ssh" if prober else "marker"),
        marker=ran.ready,
        seconds=ran.seconds,
        accel=accel,
        console_log=log,
        command=ran.command,
        seed=plan.seed,
        ssh_port=port,
        ssh_output=prober.output if prober else None,
    )


def command(
    accel: str, options: BootOptions, overlay: Path, extra: list[str], port: int
) -> list[str]:
    """The qemu command line: the overlay as a virtio disk, user networking, serial console."""
    # graphics=off makes SeaBIOS print to the serial console too ("No bootable device.").
    args = vm.machine_args(accel, options.memory_mib, options.vcpus, machine="pc,graphics=off")
    serial = "mon:stdio" if options.console else "stdio"  # mon: lets Ctrl-a x quit qemu
    args += ["-display", "none", "-monitor", "none", "-serial", serial]
    drive = f"file={_qemu_path(overlay)},format=qcow2,if=none,id=disk0,cache=unsafe,discard=unmap"
    args += ["-drive", drive, "-device", "virtio-blk-pci,drive=disk0,bootindex=0"]
    args += ["-boot", "strict=on"]  # the disk or nothing: no PXE, no CD-ROM boot
    args += ["-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"]
    args += ["-device", "virtio-net-pci,netdev=net0,romfile="]  # no iPXE option ROM
    return [*args, *extra, *vm.rng_args()]


def _check(options: BootOptions) -> None:
    if options.seed is not None and options.cloud_init is not None:
        raise RecipeError("give a seed ISO or cloud-init options, not both")
    if options.seed is not None and not options.seed.is_file():
        raise RecipeError(f"seed {options.seed} is not a file")
    if options.seedless and options.seed is not None:
        raise RecipeError("a seedless boot serves cloud-init options; it takes no seed ISO")
    if options.timeout <= 0:
        raise RecipeError(f"timeout must be positive, not {options.timeout:g}")
    if options.memory_mib < 64 or options.vcpus < 1:
        raise RecipeError("give the VM at least 64 MiB of memory and one vCPU")
    if options.console and options.ssh:
        raise RecipeError("--console and --ssh exclude each other: the console is yours")


def _plan(stack: ExitStack, options: BootOptions, workdir: Path, port: int) -> _Plan:
    """Attach the caller's seed, or make one (with a per-boot key for SSH when needed)."""
    spec, target = _with_ssh(options, workdir, port)
    if options.seed is not None:
        return _Plan(_cdrom(options.seed), str(options.seed), target)
    if spec is None and not options.seedless:
        return _Plan([], None, target)
    files = render(spec or SeedSpec())
    if options.seedless:
        served = stack.enter_context(serve_seed(files))
        serial = smbios_serial(served)
        return _Plan(["-smbios", f"type=1,serial={serial}"], serial, target)
    iso = workdir / "seed.iso"
    iso.write_bytes(iso_bytes(files))
    return _Plan(_cdrom(iso), f"generated, instance-id {files.instance_id}", target)


def _with_ssh(
    options: BootOptions, workdir: Path, port: int
) -> tuple[SeedSpec | None, SshTarget | None]:
    """The seed to make and the SSH login; a per-boot key when the caller brought none."""
    spec = options.cloud_init
    if options.ssh is None:
        return spec, None
    key = options.ssh_key
    if key is None and options.seed is None:
        key = make_key(workdir)
        base = spec or SeedSpec()
        seed_user = base.user or options.ssh_user or DEFAULT_USER
        spec = replace(base, user=seed_user, ssh_keys=(*base.ssh_keys, Path(f"{key}.pub")))
    login = options.ssh_user or (spec.user if spec else None)
    return spec, SshTarget(port, options.ssh, login, key)


def _cdrom(iso: Path) -> list[str]:
    return ["-drive", f"file={_qemu_path(iso)},format=raw,media=cdrom,readonly=on,if=ide,index=0"]


def _watch(options: BootOptions, log: Path, overlay: Path, prober: Prober | None) -> vm.Watch:
    markers = (re.compile(re.escape(options.marker)),) if options.marker else DEFAULT_MARKERS
    return vm.Watch(
        log=log,
        timeout=options.timeout,
        what="the guest",
        inactivity=None if prober or options.console else options.inactivity,
        disk=overlay,
        failures=FAILURE_MARKERS,
        ready=() if prober else markers,
        probe=prober.answer if prober else None,
        error=BootError,
        attach=options.console,
    )


def _overlay(layout: Layout, image: Image, workdir: Path) -> Path:
    """A qcow2 on the image's top disk; the chain resolves through symlinks named as blobs."""
    for disk in image.disks:
        (workdir / hexpart(disk.digest)).symlink_to(layout.blob_path(disk.digest))
    overlay = workdir / "boot.qcow2"
    top = image.disk
    qemu_img.create_overlay(overlay, hexpart(top.digest), DISK_FORMATS[top.media_type])
    return overlay


def _console_log(layout: Layout, image: Image) -> Path:
    """A new log per boot in the cache, named by image and time; older ones are pruned."""
    directory = layout.cache_dir / "boot"
    directory.mkdir(parents=True, exist_ok=True)
    prefix = hexpart(image.digest)[:16]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for old in sorted(directory.glob(f"{prefix}-*.console.log"))[: -(KEPT_LOGS - 1)]:
        old.unlink(missing_ok=True)
    return directory / f"{prefix}-{stamp}-{os.getpid()}.console.log"


def _qemu_path(path: Path) -> str:
    """A path inside a qemu option value, where a comma would start the next option."""
    return str(path.resolve()).replace(",", ",,")
