"""Provision: a stored image as a persistent libvirt VM whose disk gc never pulls from under it.

The VM's disk goes in a pool directory outside the store (``/var/lib/libvirt/images`` on the
system instance, ``$XDG_DATA_HOME/libvirt/images`` on a session, or ``--pool``): a qcow2
overlay backed by the image's top blob through its absolute path in ``blobs/sha256/``, recorded
as a gc root of kind ``vm`` before the file exists (as ``export --link`` does), or with ``copy``
a standalone qcow2 that needs nothing of the store. The seed is copied beside it, so the VM
keeps its CD-ROM whatever happens to the file given. The domain is defined and started through
libvirt; a failure at any step undoes the steps before it. ``print_only`` makes nothing and
connects to nothing: it reports the XML and the ``virt-install`` line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagekit import config
from imagekit.boot import osinfo
from imagekit.boot.domain import (
    DomainSpec,
    Network,
    VmRecord,
    check_name,
    domain_xml,
    virt_install_argv,
)
from imagekit.boot.hypervisor import Hypervisor, connect_local, is_system
from imagekit.core import atomic
from imagekit.disk import qemu_img
from imagekit.errors import ImagekitError, RecipeError, StoreError
from imagekit.guest import appliance
from imagekit.image import Image
from imagekit.oci import roots
from imagekit.oci.layout import Layout
from imagekit.oci.media import DISK_FORMATS
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

SYSTEM_POOL = Path("/var/lib/libvirt/images")  # libvirt's own "default" pool
_ISO_MAGIC_OFFSET = 32769  # "CD001" in the primary volume descriptor
_FILE_MODE = 0o600  # a VM's disk and seed are its own; libvirt gives them to qemu's user


@dataclass(frozen=True)
class ProvisionOptions:
    """The VM to make. ``network``: ``network=NAME``, ``bridge=NAME``, ``user`` or ``none``
    (default: the libvirt network ``default`` on the system instance, ``user`` on a session).
    ``connect`` is a libvirt URI (None: libvirt's default); ``pool`` the directory for the
    VM's files; ``copy`` a standalone disk instead of an overlay on the store."""

    name: str
    seed: Path | None = None
    memory_mib: int = 1024
    vcpus: int = 1
    network: str | None = None
    connect: str | None = None
    pool: Path | None = None
    copy: bool = False
    print_only: bool = False


@dataclass(frozen=True)
class ProvisionReport:
    """What was made (``defined``), or with ``print_only`` what would be."""

    name: str
    uri: str | None
    defined: bool
    state: str  # libvirt's word for it (running, ...), "not defined" when printing
    accel: str  # kvm, or tcg (domain type "qemu")
    record: VmRecord
    root: Path | None  # the gc root an overlay is recorded as
    virt_install: list[str]
    xml: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "defined": self.defined,
            "state": self.state,
            "accel": self.accel,
            **self.record.to_json(),
            "root": str(self.root) if self.root else None,
            "virt_install": self.virt_install,
            "xml": self.xml,
        }


def provision(
    layout: Layout,
    image: Image,
    options: ProvisionOptions,
    *,
    progress: ProgressCallback = ignore_progress,
) -> ProvisionReport:
    """Make ``image`` a VM (see the module docstring); hold the store's shared lock."""
    _check(options)
    if options.print_only:
        uri = options.connect
        spec = _plan(layout, image, options, is_system(uri) if uri else os.geteuid() == 0)
        return _report(spec, uri, "not defined", defined=False)
    with connect_local(options.connect) as hypervisor:
        uri = hypervisor.uri
        spec = _plan(layout, image, options, hypervisor.system)
        if hypervisor.lookup(spec.name) is not None:
            raise RecipeError(
                f"a domain named {spec.name} exists on {uri}: choose another --name, or "
                f"imagekit provision --remove {spec.name} if imagekit made it"
            )
        state = _make(layout, image, spec, _Make(hypervisor, uri, options.seed, progress))
    return _report(spec, uri, state, defined=True)


def _check(options: ProvisionOptions) -> None:
    check_name(options.name)
    if options.memory_mib < 64 or options.vcpus < 1:
        raise RecipeError("give the VM at least 64 MiB of memory and one vCPU")
    if options.network is not None:
        Network.parse(options.network)
    if options.seed is not None:
        _check_iso(options.seed)


def _check_iso(seed: Path) -> None:
    try:
        with seed.open("rb") as f:
            f.seek(_ISO_MAGIC_OFFSET)
            magic = f.read(5)
    except OSError as e:
        raise RecipeError(f"cannot read seed {seed}: {e.strerror}") from None
    if magic != b"CD001":
        raise RecipeError(f"seed {seed} is not an ISO 9660 image; make one with imagekit seed")


def _plan(layout: Layout, image: Image, options: ProvisionOptions, system: bool) -> DomainSpec:
    """The domain and the paths of its files; nothing is made or checked on disk but the pool."""
    pool = _pool(layout, options.pool, system)
    name, seed = options.name, options.seed
    if seed is not None:  # printing: virt-install would attach the seed where it is
        seed = Path(os.path.abspath(seed)) if options.print_only else pool / f"{name}-seed.iso"
    chain = tuple(
        (Path(os.path.abspath(layout.blob_path(disk.digest))), DISK_FORMATS[disk.media_type])
        for disk in reversed(image.disks)
    )
    record = VmRecord(
        store=os.path.abspath(layout.root),
        ref=image.ref,
        manifest=image.digest,
        image=image.disk.digest,
        disk=pool / f"{name}.qcow2",
        mode="copy" if options.copy else "overlay",
        seed=seed,
        console=pool / f"{name}.console.log",
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if options.network:
        network = Network.parse(options.network)
    else:
        network = Network("network", "default") if system else Network("user")
    provenance = image.provenance
    info = osinfo.lookup(_string(provenance.get("name")), _string(provenance.get("version")))
    return DomainSpec(
        name=name,
        accel=appliance.accel(),
        memory_mib=options.memory_mib,
        vcpus=options.vcpus,
        network=network,
        record=record,
        chain=() if options.copy else chain,
        osinfo=info,
    )


def _pool(layout: Layout, pool: Path | None, system: bool) -> Path:
    if pool is None:
        path = SYSTEM_POOL if system else config.data_home() / "libvirt" / "images"
    else:
        path = Path(os.path.abspath(pool))
        if not path.is_dir():
            raise RecipeError(f"--pool {pool} is not a directory; create it first")
    if "," in str(path):
        raise RecipeError(f"--pool {path}: libvirt's tools split options at commas; use another")
    if Path(os.path.realpath(path)).is_relative_to(os.path.realpath(layout.root)):
        raise RecipeError(f"--pool {path} is inside the store; give a directory outside it")
    return path


@dataclass(frozen=True)
class _Make:
    """Where and how to make a VM: the connection, the seed to copy, the progress callback."""

    hypervisor: Hypervisor
    uri: str
    seed: Path | None
    progress: ProgressCallback


def _make(layout: Layout, image: Image, spec: DomainSpec, make: _Make) -> str:
    """The disk (with its root first), the seed, the domain; undone on any failure."""
    record, made = spec.record, []
    top = image.disk
    blob, fmt = Path(os.path.abspath(layout.blob_path(top.digest))), DISK_FORMATS[top.media_type]
    if not layout.has_blob(top.digest):
        raise StoreError(f"image {image.digest} lost its disk {top.digest}; pull it again")
    for path in (record.disk, record.seed):
        if path is not None and os.path.lexists(path):
            raise RecipeError(f"{path} exists: remove it or choose another --name (or --pool)")
    record.disk.parent.mkdir(mode=0o711, parents=True, exist_ok=True)  # the default pool
    previous = roots.get(layout, record.disk)  # a stale one: its file is gone
    try:
        if record.mode == "overlay":
            digests = tuple(d.digest for d in image.disks)
            # The record first: a kill after it leaves a root gc drops, never a disk that
            # nothing keeps alive.
            roots.add(layout, roots.Root.new(record.disk, "vm", image.digest, digests, image.ref))
            _new_file(record.disk, lambda temp: qemu_img.create_linked_overlay(temp, blob, fmt))
        else:
            _new_file(
                record.disk,
                lambda temp: qemu_img.convert(blob, fmt, temp, "qcow2", progress=make.progress),
            )
        made.append(record.disk)
        if record.seed is not None and make.seed is not None:
            source = make.seed
            _new_file(record.seed, lambda temp: shutil.copyfile(source, temp))
            made.append(record.seed)
        return _define_and_start(layout, spec, make)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        if previous is not None:
            roots.add(layout, previous)
        elif record.mode == "overlay":
            roots.remove(layout, record.disk)
        raise


def _define_and_start(layout: Layout, spec: DomainSpec, make: _Make) -> str:
    console_existed = spec.record.console.exists()
    domain = make.hypervisor.define(domain_xml(spec))
    try:
        make.progress(ProgressEvent("boot", f"starting {spec.name} ({spec.accel}) on {make.uri}"))
        domain.start()
    except BaseException as exc:
        domain.undefine()
        if not console_existed:
            spec.record.console.unlink(missing_ok=True)
        if isinstance(exc, ImagekitError):
            raise _start_failed(exc, layout, spec) from None
        raise
    return domain.state()


def _start_failed(error: ImagekitError, layout: Layout, spec: DomainSpec) -> ImagekitError:
    """A start refused for want of permission says who must be able to read what."""
    text = str(error)
    if "Permission denied" not in text:
        return error
    if os.path.abspath(layout.blobs_dir) in text:
        return StoreError(
            f"{text}: libvirt's qemu user cannot read the store's blobs; pass --copy, or give "
            'the store to its group (group = "libvirt-qemu" on Debian, "qemu" on Fedora, in '
            "config.toml; imagekit fsck then prints the chgrp for an existing store; docs/vm.md)"
        )
    return ImagekitError(
        f"{text}: libvirt's qemu user cannot open the VM's files in {spec.record.disk.parent}; "
        "use a --pool it can reach (libvirt gives it the files only with dynamic_ownership)"
    )


def _new_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temp beside ``path``, then link it into place; never replaces a file."""
    temp = atomic.temp_beside(path)
    try:
        write(temp)
        os.chmod(temp, _FILE_MODE)
        with temp.open("rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            raise RecipeError(
                f"{path} exists: remove it or choose another --name (or --pool)"
            ) from None
        atomic.fsync_dir(path.parent)
    finally:
        temp.unlink(missing_ok=True)


def _report(spec: DomainSpec, uri: str | None, state: str, *, defined: bool) -> ProvisionReport:
    root = spec.record.disk if spec.record.mode == "overlay" and defined else None
    return ProvisionReport(
        name=spec.name,
        uri=uri,
        defined=defined,
        state=state,
        accel=spec.accel,
        record=spec.record,
        root=root,
        virt_install=virt_install_argv(spec, uri),
        xml=domain_xml(spec),
    )


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
