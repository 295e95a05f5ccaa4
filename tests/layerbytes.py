"""What a layer changed: the yardstick its stored bytes are held to (tests, benchmarks/layers.py).

"The bytes a step changed" are the 512-byte sectors the layer maps itself (``qemu-img map``,
depth 0) whose content read through the layer differs from the content read through its parent
and is not all zeros. A sector qemu's tools could not tell apart from the parent's is no change,
whatever the guest rewrote; a sector a step zeroed costs the layer an L2 entry but no data, so
it is counted apart (``zeroed``) and never in the denominator. 512 bytes is the finest unit a
disk is written in, so no rounding of the guest's writes counts as "changed".
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The ten operations of benchmarks/customize.py (its "disk bytes" figure is issue 14's 1.42x),
# as a step mapping for Store.customize; they all work on tests/guestimage.py's busybox guest.
TEN_OPERATIONS = {
    "hostname": "web1.thin.lan",
    "timezone": "Europe/Berlin",
    "delete": ["/opt/old"],
    "mkdir": ["/srv/app/data"],
    "write": ["/etc/motd:Built by a thin-layer measurement."],
    "append_line": ["/etc/hosts:10.0.0.1 web1.thin.lan web1"],
    "link": ["/srv/app:/opt/app"],
    "chmod": ["0700:/srv/app/data"],
    "ssh_inject": ["root:string:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIThinLayerTestKeyOnly0"],
    "firstboot_command": ["echo first boot"],
}
WORDS = b"root inode dir_entry lost+found etc passwd hostname journal block group bitmap ".split()
SECTOR = 512
_ZERO = bytes(SECTOR)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Changed:
    data: int  # bytes of sectors that differ from the parent and hold data
    zeroed: int  # bytes of sectors that differ from the parent and read as zeros now
    mapped: int  # bytes the layer maps itself (data or zero), sector-granular or coarser


@dataclass(frozen=True)
class Write:
    """Known change for a layer, written by qemu-io where a guest would write it."""

    offset: int
    data: bytes


def metadata_like(rng: random.Random, size: int) -> bytes:
    """What a filesystem step mostly writes: small records, names, counters, zero padding."""
    out = bytearray()
    while len(out) < size * 3 // 4:
        out += rng.randbytes(8) + b" ".join(rng.choices(WORDS, k=6)) + b"\n"
    return bytes(out[:size]).ljust(size, b"\0")


def write_with_qemu_io(disk: Path, writes: Sequence[Write], *, zero: Sequence[int] = ()) -> None:
    """Write ``writes`` (and 64 KiB of zeros at each of ``zero``) into the qcow2 ``disk``."""
    with tempfile.TemporaryDirectory(prefix="layerbytes-") as temp:
        commands: list[str] = []
        sources: dict[bytes, Path] = {}  # a file per distinct data: 1 GiB of one fill is one file
        for write in writes:
            if (source := sources.get(write.data)) is None:
                source = sources[write.data] = Path(temp) / f"{len(sources)}.bin"
                source.write_bytes(write.data)
            commands += ["-c", f"write -q -s {source} {write.offset} {len(write.data)}"]
        commands += [arg for offset in zero for arg in ("-c", f"write -q -z {offset} 64k")]
        subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(disk)], check=True)


def own_extents(layer: Path) -> list[tuple[int, int]]:
    """(offset, length) of what ``layer`` maps itself, not through its backing chain."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", str(layer)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(e["start"], e["length"]) for e in json.loads(out) if e["depth"] == 0]


def changed_bytes(layer: Path, parent: Path, parent_format: str = "qcow2") -> Changed:
    """Compare ``layer`` (a qcow2 on ``parent``) with ``parent`` sector by sector where it maps."""
    return chain_changes(parent, [layer], parent_format)[0]


def chain_changes(base: Path, layers: Sequence[Path], base_format: str = "qcow2") -> list[Changed]:
    """``changed_bytes`` of each layer of a chain on ``base``, reading each level whole once."""
    with tempfile.TemporaryDirectory(prefix="layerbytes-") as temp:
        below = _raw(base, base_format, Path(temp) / "0.raw")
        out = []
        for number, layer in enumerate(layers, 1):
            top = _raw(layer, "qcow2", Path(temp) / f"{number}.raw")
            out.append(_compare(top, below, own_extents(layer)))
            below.unlink()
            below = top
    return out


def _raw(disk: Path, fmt: str, dest: Path) -> Path:
    command = ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(disk), str(dest)]
    subprocess.run(command, check=True)
    return dest


def _compare(top: Path, below: Path, extents: list[tuple[int, int]]) -> Changed:
    data = zeroed = 0
    with top.open("rb") as new, below.open("rb") as old:
        for offset, length in extents:
            for start in range(offset, offset + length, _CHUNK):
                size = min(_CHUNK, offset + length - start)
                new.seek(start)
                old.seek(start)
                ours, theirs = new.read(size), old.read(size)
                for at in range(0, len(ours), SECTOR):
                    sector = ours[at : at + SECTOR]
                    if sector != theirs[at : at + SECTOR]:
                        if sector == _ZERO[: len(sector)]:
                            zeroed += len(sector)
                        else:
                            data += len(sector)
    return Changed(data, zeroed, sum(length for _, length in extents))
