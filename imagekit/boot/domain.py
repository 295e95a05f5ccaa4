"""A provisioned VM on paper: its libvirt domain XML, its virt-install line, its imagekit record.

One :class:`DomainSpec` gives both the XML imagekit defines and the ``virt-install --import``
line ``provision --print`` shows, so the two cannot drift apart. The machine is the boot
check's (:mod:`imagekit.boot.check`): BIOS on qemu's ``pc``, virtio disk and network, the seed
as an IDE CD-ROM, a serial console; ``kvm`` when KVM works here, else ``qemu`` (TCG) with the
``maximum`` CPU model. An overlay's backing chain is written out layer by layer with
``relabel="no"``, so libvirt never changes the owner of the store's blobs: qemu reads them
through the store's permissions (docs/vm.md), and only the VM's own files are relabelled.

The record (``<imagekit:vm>`` in the domain's ``<metadata>``) is how ``imagekit vms`` tells
the domains imagekit made from the others, and what ``provision --remove`` deletes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from imagekit.boot.osinfo import OsInfo
from imagekit.errors import RecipeError

NAMESPACE = "urn:imagekit:libvirt:vm:1"
PREFIX = "imagekit"
LIBOSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
MACHINE = "pc"  # what the boot check proves the image boots on
NETWORK_KINDS = ("network", "bridge")  # KIND=NAME; "user" and "none" take no name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_RECORD_KEYS = ("store", "ref", "manifest", "image", "disk", "mode", "seed", "console", "created")


@dataclass(frozen=True)
class Network:
    """The VM's one interface: a libvirt network, a host bridge, qemu's user network, or none."""

    kind: str  # network | bridge | user | none
    source: str | None = None

    @classmethod
    def parse(cls, text: str) -> Network:
        """``network=default``, ``bridge=br0``, ``user`` or ``none`` (virt-install's words)."""
        kind, has_source, source = text.partition("=")
        if kind in NETWORK_KINDS and has_source and _NAME.fullmatch(source):
            return cls(kind, source)
        if kind in ("user", "none") and not has_source:
            return cls(kind)
        raise RecipeError(
            f"--network {text!r}: give network=NAME (a libvirt network), bridge=NAME (a host "
            "bridge), user (qemu's user networking) or none"
        )

    def virt_install(self) -> str:
        return f"{self.kind}={self.source}" if self.source else self.kind


@dataclass(frozen=True)
class VmRecord:
    """What imagekit made for a VM: the image it came from and the files it owns."""

    store: str  # the store's root; its roots/ has the overlay's record
    ref: str | None
    manifest: str
    image: str  # the top disk layer's digest
    disk: Path
    mode: str  # "overlay" (backed by the store, a root) or "copy" (standalone)
    seed: Path | None
    console: Path
    created: str

    def element(self) -> ET.Element:
        attributes = {key: str(value) for key, value in self._fields() if value is not None}
        return ET.Element(f"{{{NAMESPACE}}}vm", attributes)

    def to_json(self) -> dict[str, str | None]:
        return {key: None if value is None else str(value) for key, value in self._fields()}

    def _fields(self) -> list[tuple[str, object]]:
        return [(key, getattr(self, key)) for key in _RECORD_KEYS]


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain is made of; ``chain`` is the overlay's backing files, top first
    (path, format), and empty for a standalone copy."""

    name: str
    accel: str  # kvm | tcg
    memory_mib: int
    vcpus: int
    network: Network
    record: VmRecord
    chain: tuple[tuple[Path, str], ...] = ()
    osinfo: OsInfo | None = None


def check_name(name: str) -> str:
    """A VM name that is also a safe file name and a virt-install value."""
    if not _NAME.fullmatch(name):
        raise RecipeError(
            f"--name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def domain_xml(spec: DomainSpec) -> str:
    """The persistent domain's XML."""
    ET.register_namespace(PREFIX, NAMESPACE)
    ET.register_namespace("libosinfo", LIBOSINFO)
    domain = ET.Element("domain", type="kvm" if spec.accel == "kvm" else "qemu")
    _text(domain, "name", spec.name)
    metadata = ET.SubElement(domain, "metadata")
    metadata.append(spec.record.element())
    if spec.osinfo is not None:
        info = ET.SubElement(metadata, f"{{{LIBOSINFO}}}libosinfo")
        ET.SubElement(info, f"{{{LIBOSINFO}}}os", id=spec.osinfo.uri)
    _text(domain, "memory", str(spec.memory_mib), unit="MiB")
    _text(domain, "vcpu", str(spec.vcpus))
    os_element = ET.SubElement(domain, "os")
    _text(os_element, "type", "hvm", arch="x86_64", machine=MACHINE)
    ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "cpu", mode="host-passthrough" if spec.accel == "kvm" else "maximum")
    ET.SubElement(domain, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        _text(domain, f"on_{event}", action)
    _devices(ET.SubElement(domain, "devices"), spec)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _devices(devices: ET.Element, spec: DomainSpec) -> None:
    record = spec.record
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    ET.SubElement(disk, "source", file=str(record.disk))
    _backing_chain(disk, spec.chain)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if record.seed is not None:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=str(record.seed))
        ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
        ET.SubElement(cdrom, "readonly")
    if spec.network.kind != "none":
        interface = ET.SubElement(devices, "interface", type=spec.network.kind)
        if spec.network.source is not None:
            ET.SubElement(interface, "source", {spec.network.kind: spec.network.source})
        ET.SubElement(interface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(record.console), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")


def _backing_chain(disk: ET.Element, chain: tuple[tuple[Path, str], ...]) -> None:
    """The store's layers, each read-only and never relabelled; ``<backingStore/>`` ends it."""
    parent = disk
    for path, fmt in chain:
        layer = ET.SubElement(parent, "backingStore", type="file")
        ET.SubElement(layer, "format", type=fmt)
        source = ET.SubElement(layer, "source", file=str(path))
        ET.SubElement(source, "seclabel", model="dac", relabel="no")
        parent = layer
    ET.SubElement(parent, "backingStore")


def virt_install_argv(spec: DomainSpec, uri: str | None) -> list[str]:
    """The ``virt-install --import`` line that defines the same VM on the same disk."""
    record, kvm = spec.record, spec.accel == "kvm"
    argv = ["virt-install", *(["--connect", uri] if uri else [])]
    osinfo = spec.osinfo.short_id if spec.osinfo else "detect=on,require=off"
    argv += ["--import", "--name", spec.name, "--osinfo", osinfo]
    argv += ["--memory", str(spec.memory_mib), "--vcpus", str(spec.vcpus)]
    argv += ["--virt-type", "kvm" if kvm else "qemu", "--machine", MACHINE]
    argv += ["--cpu", "host-passthrough" if kvm else "mode=maximum"]
    argv += ["--disk", f"path={record.disk},format=qcow2,bus=virtio"]
    if record.seed is not None:
        argv += ["--disk", f"path={record.seed},device=cdrom"]
    argv += ["--network", spec.network.virt_install(), "--graphics", "none"]
    return [*argv, "--serial", f"pty,log.file={record.console}", "--noautoconsole"]


def read_record(metadata: str) -> VmRecord | None:
    """The record in an ``<imagekit:vm>`` element; None if it is malformed."""
    try:
        element = ET.fromstring(metadata)
    except ET.ParseError:
        return None
    values = {key: element.get(key) for key in _RECORD_KEYS}
    required = ("store", "manifest", "image", "disk", "mode", "console", "created")
    # libvirt hands the element back without its namespace (it asked for that one).
    if element.tag not in ("vm", f"{{{NAMESPACE}}}vm") or any(not values[key] for key in required):
        return None
    seed = values["seed"]
    return VmRecord(
        store=str(values["store"]),
        ref=values["ref"],
        manifest=str(values["manifest"]),
        image=str(values["image"]),
        disk=Path(str(values["disk"])),
        mode=str(values["mode"]),
        seed=Path(seed) if seed else None,
        console=Path(str(values["console"])),
        created=str(values["created"]),
    )


def files_in_use(xml: str) -> set[Path]:
    """Every file the domain's XML names as a disk or CD-ROM source or a serial log."""
    root = ET.fromstring(xml)
    sources = root.findall("./devices/disk/source") + root.findall("./devices/serial/log")
    return {Path(str(element.get("file"))) for element in sources if element.get("file")}


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element
