"""Detect a disk image's format by magic and refuse unsafe headers before any qemu tool opens it.

qemu believes what an image header says: a qcow2 backing file or external data file makes
qemu-img open another path (``/etc/shadow``, ``nbd://...``, ``json:{...}``), and a qcow2 or VMDK
published as "raw" becomes exactly that the moment anything probes its format. So the header is
parsed here, in Python, with a few bounded reads, and an image is refused when it is not the
format promised, points outside itself, is encrypted, or declares tables beyond the limits qemu
itself enforces (the same checks OpenStack's format_inspector makes).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path

from imagekit.disk import qcow2
from imagekit.disk.reader import ADVICE, MAX_NAME, DiskHeader, Reader, text
from imagekit.errors import ImagekitError, UnsafeImageError

SUPPORTED_FORMATS = ("qcow2", "raw")

_HEAD_BYTES = 64 * 1024  # every magic imagekit knows lies in here (ISO 9660's as far as 0x9001)
_MAX_DESCRIPTOR = 64 * 1024  # VMDK descriptors are a few hundred bytes; read no more

_MAGICS = (
    (b"QFI\xfb", "qcow2"),
    (b"QED\x00", "qed"),
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
    (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0", "cloop"),
)
_VDI_SIGNATURE = struct.pack("<I", 0xBEDA107F)  # at 0x40, after the "<<< ... >>>" banner
_ISO_OFFSETS = (0x8001, 0x8801, 0x9001)
# What qemu's own VMDK probe accepts: comment and blank lines, then "version=".
_VMDK_TEXT = re.compile(rb"(?:[ \t]*(?:#[^\n]*)?\r?\n)*[ \t]*version=\d")
_VMDK_KEY = re.compile(r'^\s*(createType|parentFileNameHint)\s*=\s*"([^"]*)"', re.MULTILINE)
_VMDK_EXTENT = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"', re.MULTILINE)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

_QED_HEADER = struct.Struct("<4sIIIQQQQQII")
_VMDK4_HEADER = struct.Struct("<4sIIQQQQ")  # ... capacity, grain, descriptor offset/size (sectors)


def probe(path: Path) -> DiskHeader:
    """Identify ``path`` by magic and parse its header; UnsafeImageError if it is malformed."""
    return _inspect(path)[0]


def ensure_safe(
    path: Path, expected_format: str, *, allowed_backing_dir: Path | None = None
) -> DiskHeader:
    """Refuse ``path`` unless it is ``expected_format`` and reads nothing but itself.

    ``allowed_backing_dir`` admits a qcow2 overlay whose backing file is a plain name of a file
    in that directory (store layers name their parent blob so). qemu resolves that name next to
    the overlay, so the overlay must live in that directory when it is used. The parent itself is
    not re-inspected: it is already in the store.
    """
    if expected_format not in (*SUPPORTED_FORMATS, "iso"):  # "iso": an installer, never a disk
        raise UnsafeImageError(
            f"unsupported format {expected_format!r} for {path}: imagekit accepts only qcow2 "
            "and raw disks; use the distribution's qcow2 or raw image instead"
        )
    header, problems = _inspect(path)
    backing = _backing_problem(header, allowed_backing_dir)
    if backing:
        problems.append(backing)
    if header.format != expected_format:
        found = "; ".join(["no known magic" if header.format == "raw" else "by magic", *problems])
        raise UnsafeImageError(
            f"refusing {path}: detected format {header.format!r} ({found}), but "
            f"{expected_format!r} was promised. imagekit never lets qemu guess a format: point "
            "the recipe at the disk image itself (not an installer ISO or another format), or "
            "correct its format if the file really is qcow2 or raw"
        )
    if problems:
        raise UnsafeImageError(
            f"refusing {path}: {header.format} image with {'; '.join(problems)}. {ADVICE}"
        )
    return header


def is_plain_name(name: str) -> bool:
    """A bare file name qemu resolves beside the overlay: no directory, ``..``, protocol or NUL."""
    return len(name) <= MAX_NAME and _PLAIN_NAME.fullmatch(name) is not None


def _inspect(path: Path) -> tuple[DiskHeader, list[str]]:
    """The header plus what makes the file unsafe by itself (backing files are judged later)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ImagekitError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeImageError(f"refusing {path}: not a regular file")
        reader = Reader(fd, path)
        head = reader.read(0, _HEAD_BYTES)
        fmt = _detect(head, reader.read(reader.size - 512, 512) if reader.size >= 512 else b"")
        if fmt == "qcow2":
            return qcow2.read(reader)
        if fmt == "qed":
            return _qed(reader), []
        if fmt == "vmdk":
            return _vmdk(reader, head)
        return DiskHeader(fmt), []
    finally:
        os.close(fd)


def _detect(head: bytes, tail: bytes) -> str:
    for magic, fmt in _MAGICS:
        if head.startswith(magic):
            return fmt
    if head[0x40:0x44] == _VDI_SIGNATURE:
        return "vdi"
    if head.startswith(b"# Disk DescriptorFile") or _VMDK_TEXT.match(head):
        return "vmdk"
    if any(head[offset : offset + 5] == b"CD001" for offset in _ISO_OFFSETS):
        return "iso"
    if tail.startswith(b"conectix"):  # fixed-size VHD: the footer is the only header
        return "vpc"
    if tail.startswith(b"koly"):
        return "dmg"
    return "raw"


def _qed(r: Reader) -> DiskHeader:
    header = r.exact(0, _QED_HEADER.size, "QED header")
    _, cluster_size, _, _, features, _, _, _, image_size, name_offset, name_size = (
        _QED_HEADER.unpack(header)
    )
    backing_file = None
    if features & 1:
        if name_size > MAX_NAME:
            raise r.malformed(f"a {name_size}-byte backing file name")
        backing_file = text(r.exact(name_offset, name_size, "backing file name"))
    return DiskHeader(
        "qed",
        virtual_size=image_size,
        backing_file=backing_file,
        backing_format="raw" if features & 4 else None,
        details={"cluster_size": cluster_size, "features": features},
    )


def _vmdk(r: Reader, head: bytes) -> tuple[DiskHeader, list[str]]:
    if head.startswith(b"COWD"):  # VMware 3: no descriptor to read
        return DiskHeader("vmdk", details={"version": 3}), []
    embedded = head.startswith(b"KDMV")
    virtual_size = None
    offset, length = 0, r.size
    if embedded:
        fields = _VMDK4_HEADER.unpack(r.exact(0, _VMDK4_HEADER.size, "VMDK header"))
        virtual_size, offset, length = fields[3] * 512, fields[5] * 512, fields[6] * 512
    text = r.read(offset, min(length, _MAX_DESCRIPTOR)).decode("utf-8", "replace")
    keys = dict(_VMDK_KEY.findall(text))
    extents = _VMDK_EXTENT.findall(text)
    header = DiskHeader(
        "vmdk",
        virtual_size=virtual_size,
        backing_file=keys.get("parentFileNameHint"),
        details={"create_type": keys.get("createType"), "extents": extents},
    )
    # A sparse VMDK's embedded descriptor names the file itself; a separate one names others.
    if extents and not embedded:
        return header, [
            f"a descriptor (createType {keys.get('createType')!r}) that makes qemu open "
            f"extent file(s) {', '.join(map(repr, extents))}"
        ]
    return header, []


def _backing_problem(header: DiskHeader, allowed_dir: Path | None) -> str | None:
    name = header.backing_file
    if name is None:
        return None
    if allowed_dir is None:
        return f"a backing file {name!r} (qemu would open that path or URL as well)"
    if not is_plain_name(name):
        return f"a backing file {name!r} that is not a plain file name in {allowed_dir}"
    if header.backing_format not in SUPPORTED_FORMATS:
        return f"a backing file {name!r} without a qcow2/raw backing format (qemu would probe it)"
    try:
        mode = os.lstat(allowed_dir / name).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode):
        return f"a backing file {name!r} that is not a file in {allowed_dir}"
    return None
