"""Grow a guest's root filesystem into a disk enlarged before launch: partition, LVM, filesystem."""

from __future__ import annotations

from typing import Any

from imagekit.errors import CustomizeError
from imagekit.guest import appliance


def grow_filesystems(g: Any, root: str | None = None) -> list[str]:
    """Grow the root filesystem into a disk that was enlarged before launch; call before mounting.

    ``root`` is the OS root device if known (a recorded inspection), else it is inspected.

    Order: move the GPT backup header to the new end, extend the last partition (it must hold
    the root), then pvresize + lvresize for LVM, then resize2fs / xfs_growfs / btrfs resize.
    """
    root = root or appliance.find_root(g)
    # not mountable_device(): it can return the appliance's own name (/dev/sdb1) for /dev/sda1
    candidates = [*g.list_devices(), *g.list_partitions(), *g.lvs()]
    device = next((d for d in candidates if root.startswith(f"btrfsvol:{d}/")), root)
    messages: list[str] = []
    partition = _single_pv(g, device) if g.is_lv(device) else device
    if partition not in g.list_devices():
        messages.append(_grow_partition(g, partition))
    if partition != device:
        g.pvresize(partition)
        g.lvresize_free(device, 100)
        messages.append(f"grew the logical volume {device}")
    messages.append(_grow_filesystem(g, device))
    return messages


def _single_pv(g: Any, lv: str) -> str:
    vg = g.lvm_canonical_lv_name(lv).split("/")[2]
    uuids = set(g.vgpvuuids(vg))
    pvs = [pv for pv in g.pvs() if g.pvuuid(pv) in uuids]
    if len(pvs) != 1:
        raise CustomizeError(
            f"cannot grow {lv}: its volume group {vg} spans {len(pvs)} physical volumes"
        )
    return str(pvs[0])


def _grow_partition(g: Any, partition: str) -> str:
    disk, number = g.part_to_dev(partition), g.part_to_partnum(partition)
    parts = g.part_list(disk)
    last = max(parts, key=lambda p: p["part_start"])
    if last["part_num"] != number:
        raise CustomizeError(
            f"cannot grow {partition}: it is not the last partition on {disk}; use virt-resize"
        )
    gpt = g.part_get_parttype(disk) == "gpt"
    if not gpt and number > 4:
        raise CustomizeError(f"cannot grow {partition}, a logical MBR partition; use virt-resize")
    if gpt:
        g.part_expand_gpt(disk)
    sector = g.blockdev_getss(disk)
    sectors = g.blockdev_getsize64(disk) // sector
    # GPT keeps a backup header and a 16 KiB partition table in the disk's last sectors
    end = sectors - 1 - (1 + 16384 // sector if gpt else 0)
    if end > last["part_end"] // sector:
        g.part_resize(disk, number, end)
    return f"grew {partition} to end at sector {end}"


def _grow_filesystem(g: Any, device: str) -> str:
    fstype = g.vfs_type(device)
    if fstype.startswith("ext"):
        g.e2fsck(device, correct=True)
        g.resize2fs(device)
    elif fstype in ("xfs", "btrfs"):
        g.mount(device, "/")
        if fstype == "xfs":
            g.xfs_growfs("/", datasec=True)
        else:
            g.btrfs_filesystem_resize("/")
        g.umount("/")
    else:
        raise CustomizeError(f"cannot grow the {fstype} filesystem on {device}")
    return f"grew the {fstype} filesystem on {device}"
