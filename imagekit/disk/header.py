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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from imagekit.errors import ImagekitError, UnsafeImageError

SUPPORTED_FORMATS = ("qcow2", "raw")

_HEAD_BYTES = 64 * 1024  # every magic imagekit knows lies in here (ISO 9660's as far as 0x9001)
_MAX_DESCRIPTOR = 64 * 1024  # VMDK descriptors are a few hundred bytes; read no more
_MAX_NAME = 1023  # qemu's limit for a qcow2 backing file name
_MAX_VIRTUAL_SIZE = 64 * 1024**4
_MAX_L1_BYTES = 32 * 1024**2  # qemu's QCOW_MAX_L1_SIZE
_MAX_REFTABLE_BYTES = 8 * 1024**2  # qemu's QCOW_MAX_REFTABLE_SIZE
_MAX_SNAPSHOTS = 65536  # qemu's QCOW_MAX_SNAPSHOTS

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

_QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72 bytes common to versions 2 and 3
_QCOW2_V3 = struct.Struct(">QQQII")  # feature bits, refcount_order, header_length
_QCOW2_INCOMPATIBLE = ("dirty", "corrupt", "external_data_file", "compression_type", "extended_l2")
_QCOW2_CRYPT = {1: "AES", 2: "LUKS"}
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_ENCRYPTION = 0x0537BE77
_EXT_DATA_FILE = 0x44415441
_QED_HEADER = struct.Struct("<4sIIIQQQQQII")
_VMDK4_HEADER = struct.Struct("<4sIIQQQQ")  # ... capacity, grain, descriptor offset/size (sectors)

_ADVICE = (
    "imagekit only stores self-contained, unencrypted disks: use the distribution's plain qcow2 "
    "or raw image, or flatten this one with `qemu-img convert -O qcow2` where you trust it"
)


@dataclass(frozen=True)
class DiskHeader:
    """What an image's own header says about it, read without letting qemu parse it."""

    format: str  # by magic; "raw" means no known magic
    virtual_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    details: dict[str, object] = field(default_factory=dict)  # header fields for the manifest


class _Qcow2Fixed(NamedTuple):
    """The 72 header bytes common to qcow2 versions 2 and 3, in their order on disk."""

    magic: bytes
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    reftable_offset: int
    reftable_clusters: int
    nb_snapshots: int
    snapshots_offset: int

    @classmethod
    def unpack(cls, head: bytes) -> _Qcow2Fixed:
        return cls._make(_QCOW2_HEADER.unpack_from(head))

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


class _Qcow2V3(NamedTuple):
    """The fields version 3 adds; a version 2 header has these values implicitly."""

    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = _QCOW2_HEADER.size


@dataclass(frozen=True)
class _Qcow2:
    """A qcow2 header as read, before it is judged."""

    fixed: _Qcow2Fixed
    v3: _Qcow2V3
    extensions: dict[int, bytes]
    backing_file: str | None

    @property
    def features(self) -> list[str]:
        bits = self.v3.incompatible
        return [name for bit, name in enumerate(_QCOW2_INCOMPATIBLE) if bits >> bit & 1]

    @property
    def unknown_features(self) -> int:
        known = len(_QCOW2_INCOMPATIBLE)
        return self.v3.incompatible >> known << known

    @property
    def encryption(self) -> str | None:
        method = self.fixed.crypt_method
        if method:
            return _QCOW2_CRYPT.get(method, str(method))
        return "encryption header extension" if _EXT_ENCRYPTION in self.extensions else None

    def extension_text(self, ext_type: int) -> str | None:
        data = self.extensions.get(ext_type)
        return None if data is None else _text(data)


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
            f"refusing {path}: {header.format} image with {'; '.join(problems)}. {_ADVICE}"
        )
    return header


def qcow2_backing_name(path: Path) -> str | None:
    """The backing file a qcow2 header names, read with no other check: what qemu would open.

    gc follows it (besides the parent annotation) for blobs already in the store, which were
    fully inspected when they came in; here only the name matters, not whether it is safe.
    """
    with path.open("rb") as f:
        head = f.read(_QCOW2_HEADER.size)
        if len(head) < _QCOW2_HEADER.size or not head.startswith(b"QFI\xfb"):
            return None
        fixed = _Qcow2Fixed.unpack(head)
        if not fixed.backing_offset or not 0 < fixed.backing_size <= _MAX_NAME:
            return None
        f.seek(fixed.backing_offset)
        return _text(f.read(fixed.backing_size))


def is_plain_name(name: str) -> bool:
    """A bare file name qemu resolves beside the overlay: no directory, ``..``, protocol or NUL."""
    return len(name) <= _MAX_NAME and _PLAIN_NAME.fullmatch(name) is not None


class _Reader:
    """Bounded reads from an open image; reading past the end means a cut or lying header."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.size = os.fstat(fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        return os.pread(self.fd, min(length, self.size - offset), offset)

    def exact(self, offset: int, length: int, what: str) -> bytes:
        data = self.read(offset, length)
        if len(data) < length:
            raise self.truncated(what, offset + length)
        return data

    def truncated(self, what: str, end: int) -> UnsafeImageError:
        return UnsafeImageError(
            f"refusing {self.path}: truncated header: its {what} reaches byte {end} but the file "
            f"has {self.size} bytes; the download is incomplete or the file is not a disk image"
        )

    def malformed(self, what: str) -> UnsafeImageError:
        return UnsafeImageError(
            f"refusing {self.path}: malformed header: {what}; qemu would reject it too, so the "
            "file is corrupt or crafted. Fetch it again or report it upstream"
        )


def _inspect(path: Path) -> tuple[DiskHeader, list[str]]:
    """The header plus what makes the file unsafe by itself (backing files are judged later)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ImagekitError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeImageError(f"refusing {path}: not a regular file")
        reader = _Reader(fd, path)
        head = reader.read(0, _HEAD_BYTES)
        fmt = _detect(head, reader.read(reader.size - 512, 512) if reader.size >= 512 else b"")
        if fmt == "qcow2":
            return _qcow2(reader)
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


def _text(data: bytes) -> str:
    """Names exactly as stored, so NULs and odd bytes survive to be refused, not hidden."""
    return data.decode("utf-8", "surrogateescape")


def _qcow2(r: _Reader) -> tuple[DiskHeader, list[str]]:
    """Read a qcow2 header as qemu does, refusing what qemu would refuse to open."""
    fixed = _Qcow2Fixed.unpack(r.exact(0, _QCOW2_HEADER.size, "qcow2 header"))
    if fixed.version == 1:  # the old qcow format: same magic, different layout
        return DiskHeader("qcow", details={"version": 1}), []
    if fixed.version not in (2, 3):
        raise r.malformed(f"qcow2 version {fixed.version} (only 2 and 3 exist)")
    if not 9 <= fixed.cluster_bits <= 21:
        raise r.malformed(f"cluster_bits {fixed.cluster_bits} outside 9..21")
    v3 = _qcow2_v3(r, fixed)
    extensions = _qcow2_extensions(r, fixed, v3.header_length)
    q = _Qcow2(fixed, v3, extensions, _qcow2_backing_file(r, fixed))
    return _qcow2_header(q), [*_qcow2_problems(q), *_qcow2_table_problems(q, r.size)]


def _qcow2_v3(r: _Reader, fixed: _Qcow2Fixed) -> _Qcow2V3:
    if fixed.version == 2:
        return _Qcow2V3()
    data = r.exact(_QCOW2_HEADER.size, _QCOW2_V3.size, "qcow2 v3 header")
    v3 = _Qcow2V3._make(_QCOW2_V3.unpack(data))
    length = v3.header_length
    if length < 104 or length % 8 or length > fixed.cluster_size:
        raise r.malformed(f"header_length {length}")
    return v3


def _qcow2_extensions(r: _Reader, fixed: _Qcow2Fixed, header_length: int) -> dict[int, bytes]:
    """Extensions fill the header cluster up to the backing file name, as qemu reads them."""
    if fixed.backing_offset > fixed.cluster_size:
        raise r.malformed(
            f"backing file name at byte {fixed.backing_offset}, past the header cluster"
        )
    room = (fixed.backing_offset or fixed.cluster_size) - header_length
    area = r.read(header_length, room)
    extensions: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= room:
        if pos + 8 > len(area):
            raise r.truncated("header extension area", header_length + pos + 8)
        ext_type, length = struct.unpack_from(">II", area, pos)
        if ext_type == 0:
            break
        if pos + 8 + length > room:
            raise r.malformed(f"header extension 0x{ext_type:08x} runs past the header area")
        if pos + 8 + length > len(area):
            raise r.truncated("header extension area", header_length + pos + 8 + length)
        extensions[ext_type] = area[pos + 8 : pos + 8 + length]
        pos += 8 + (length + 7) // 8 * 8
    return extensions


def _qcow2_backing_file(r: _Reader, fixed: _Qcow2Fixed) -> str | None:
    offset, size = fixed.backing_offset, fixed.backing_size
    if not (offset and size):
        return None
    if size > _MAX_NAME or offset + size > fixed.cluster_size:
        raise r.malformed(f"a {size}-byte backing file name at byte {offset}")
    return _text(r.exact(offset, size, "backing file name"))


def _qcow2_header(q: _Qcow2) -> DiskHeader:
    fixed, v3 = q.fixed, q.v3
    return DiskHeader(
        "qcow2",
        virtual_size=fixed.size,
        backing_file=q.backing_file,
        backing_format=q.extension_text(_EXT_BACKING_FORMAT),
        data_file=q.extension_text(_EXT_DATA_FILE),
        details={
            "version": fixed.version,
            "cluster_bits": fixed.cluster_bits,
            "header_length": v3.header_length,
            "l1_size": fixed.l1_size,
            "l1_table_offset": fixed.l1_offset,
            "refcount_table_offset": fixed.reftable_offset,
            "refcount_table_clusters": fixed.reftable_clusters,
            "refcount_order": v3.refcount_order,
            "nb_snapshots": fixed.nb_snapshots,
            "snapshots_offset": fixed.snapshots_offset,
            "encryption": q.encryption,
            "incompatible_features": q.features,
            "unknown_incompatible_features": q.unknown_features,
            "compatible_features": v3.compatible,
            "autoclear_features": v3.autoclear,
            "extensions": [f"0x{ext_type:08x}" for ext_type in q.extensions],
        },
    )


def _qcow2_problems(q: _Qcow2) -> Iterator[str]:
    """What the header declares that makes qemu read elsewhere, or read what it cannot check."""
    data_file = q.extension_text(_EXT_DATA_FILE)
    if data_file is not None or "external_data_file" in q.features:
        name = "" if data_file is None else f" {data_file!r}"
        yield f"an external data file{name} (qemu would read the guest data there)"
    if q.encryption:
        yield f"encryption ({q.encryption}; imagekit cannot inspect encrypted disks)"
    if "corrupt" in q.features:
        yield "the corrupt bit set (qemu found its metadata inconsistent)"
    if q.unknown_features:
        yield f"unknown incompatible features (0x{q.unknown_features:x})"
    if q.fixed.size > _MAX_VIRTUAL_SIZE:
        yield f"a virtual size of {q.fixed.size} bytes (limit {_MAX_VIRTUAL_SIZE})"


def _qcow2_table_problems(q: _Qcow2, file_size: int) -> Iterator[str]:
    """Tables qemu would allocate or read beyond its own limits or past the end of the file."""
    fixed, cluster_size = q.fixed, q.fixed.cluster_size
    l2_entries = cluster_size // (16 if "extended_l2" in q.features else 8)
    if fixed.l1_size * cluster_size * l2_entries < fixed.size:
        yield f"an L1 table of {fixed.l1_size} entries, too few for its virtual size"
    reftable_bytes = fixed.reftable_clusters * cluster_size
    tables = (
        ("L1 table", fixed.l1_offset, fixed.l1_size * 8, _MAX_L1_BYTES),
        ("refcount table", fixed.reftable_offset, reftable_bytes, _MAX_REFTABLE_BYTES),
    )
    for name, offset, length, limit in tables:
        if length > limit:
            yield f"a {length}-byte {name} (qemu's limit is {limit})"
        elif offset % cluster_size or offset + length > file_size:
            yield f"a {name} at byte {offset}, unaligned or past the end of the file"
    if q.v3.refcount_order > 6:
        yield f"refcount_order {q.v3.refcount_order} (at most 6)"
    if fixed.nb_snapshots > _MAX_SNAPSHOTS:
        yield f"{fixed.nb_snapshots} snapshots (qemu's limit is {_MAX_SNAPSHOTS})"


def _qed(r: _Reader) -> DiskHeader:
    header = r.exact(0, _QED_HEADER.size, "QED header")
    _, cluster_size, _, _, features, _, _, _, image_size, name_offset, name_size = (
        _QED_HEADER.unpack(header)
    )
    backing_file = None
    if features & 1:
        if name_size > _MAX_NAME:
            raise r.malformed(f"a {name_size}-byte backing file name")
        backing_file = _text(r.exact(name_offset, name_size, "backing file name"))
    return DiskHeader(
        "qed",
        virtual_size=image_size,
        backing_file=backing_file,
        backing_format="raw" if features & 4 else None,
        details={"cluster_size": cluster_size, "features": features},
    )


def _vmdk(r: _Reader, head: bytes) -> tuple[DiskHeader, list[str]]:
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
