"""What imagekit provisioned: listing its libvirt domains and removing one with its files.

A domain is imagekit's when its ``<metadata>`` holds an ``<imagekit:vm>`` record
(:mod:`imagekit.boot.domain`); the record names the store it came from, whose ``roots/`` keeps
an overlay's backing chain, and the files ``--remove`` deletes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.boot.domain import NAMESPACE, VmRecord, files_in_use, read_record
from imagekit.boot.hypervisor import connect_local
from imagekit.errors import RecipeError, StoreError
from imagekit.oci import roots
from imagekit.oci.layout import Layout


@dataclass(frozen=True)
class VmInfo:
    """A domain imagekit made, as ``imagekit vms`` lists it.

    ``root_status``: ``yes`` (its root keeps the chain), ``copy`` (it needs none), ``other
    store`` (its root is in the store it was made from) or ``missing`` (gc may free its chain).
    """

    name: str
    state: str
    record: VmRecord
    root: roots.Root | None
    root_status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            **self.record.to_json(),
            "root": self.root.to_json() if self.root else None,
            "root_status": self.root_status,
        }


@dataclass(frozen=True)
class RemoveReport:
    """What ``unprovision`` deleted: the domain, its files, and its root if it had one."""

    name: str
    files: list[Path]
    root: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "files": [str(f) for f in self.files], "root": self.root}


def vms(layout: Layout, uri: str | None = None) -> list[VmInfo]:
    """The domains imagekit made on ``uri``, by name, with the roots that keep their chains."""
    found = []
    with connect_local(uri) as hypervisor:
        for domain in hypervisor.domains():
            text = domain.metadata(NAMESPACE)
            record = read_record(text) if text else None
            if record is None:
                continue
            root, status = _root_of(layout, record)
            found.append(VmInfo(domain.name, domain.state(), record, root, status))
    return found


def _root_of(layout: Layout, record: VmRecord) -> tuple[roots.Root | None, str]:
    if record.mode == "copy":
        return None, "copy"
    if not _same_store(layout, record):
        return None, "other store"
    root = roots.get(layout, record.disk)
    return root, "yes" if root is not None else "missing"


def unprovision(layout: Layout, name: str, uri: str | None = None) -> RemoveReport:
    """Stop and undefine a VM imagekit made, delete its files and drop its root.

    Only files both its record names and its XML still uses are deleted, so a domain whose
    disks were changed by hand keeps what imagekit did not make.
    """
    with connect_local(uri) as hypervisor:
        domain = hypervisor.lookup(name)
        if domain is None:
            raise RecipeError(
                f"there is no domain {name!r} on {hypervisor.uri}; imagekit vms lists the VMs "
                "imagekit made"
            )
        text = domain.metadata(NAMESPACE)
        record = read_record(text) if text else None
        if record is None:
            raise RecipeError(
                f"{name} was not made by imagekit provision (it has no imagekit record); "
                f"remove it with virsh undefine {name}"
            )
        if not _same_store(layout, record):
            raise StoreError(
                f"{name} was provisioned from the store at {record.store}; run imagekit "
                f"provision --remove {name} --store {record.store}"
            )
        in_use = files_in_use(domain.xml())
        owned = [p for p in (record.disk, record.seed, record.console) if p and p in in_use]
        if domain.active():
            domain.destroy()
        domain.undefine()
    deleted = [path for path in owned if _unlink(path)]
    dropped = record.mode == "overlay" and roots.remove(layout, record.disk)
    return RemoveReport(name, deleted, dropped)


def _same_store(layout: Layout, record: VmRecord) -> bool:
    return os.path.realpath(record.store) == os.path.realpath(layout.root)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
