"""The one qcow2 header reader: what the header says, and what qemu would refuse in it.

Limits are qemu's own (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE, QCOW_MAX_SNAPSHOTS), so an
image imagekit accepts is one qemu would open, and a header that lies about its tables is
refused before qemu-img ever reads it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from imagekit.disk.reader import MAX_NAME, DiskHeader, Reader, text

_MAX_VIRTUAL_SIZE = 64 * 1024**4
_MAX_L1_BYTES = 32 * 1024**2  # qemu's QCOW_MAX_L1_SIZE
_MAX_REFTABLE_BYTES = 8 * 1024**2  # qemu's QCOW_MAX_REFTABLE_SIZE
_MAX_SNAPSHOTS = 65536  # qemu's QCOW_MAX_SNAPSHOTS
_QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72 bytes common to versions 2 and 3
_QCOW2_V3 = struct.Struct(">QQQII")  # feature bits, refcount_order, header_length
_QCOW2_INCOMPATIBLE = ("dirty", "corrupt", "external_data_file", "compression_type", "extended_l2")
_QCOW2_CRYPT = {1: "AES", 2: "LUKS"}
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_ENCRYPTION = 0x0537BE77
_EXT_DATA_FILE = 0x44415441


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

    def extensiontext(self, ext_type: int) -> str | None:
        data = self.extensions.get(ext_type)
        return None if data is None else text(data)


def backing_name(path: Path) -> str | None:
    """The backing file a qcow2 header names, read with no other check: what qemu would open.

    gc follows it (besides the parent annotation) for blobs already in the store, which were
    fully inspected when they came in; here only the name matters, not whether it is safe.
    """
    with path.open("rb") as f:
        head = f.read(_QCOW2_HEADER.size)
        if len(head) < _QCOW2_HEADER.size or not head.startswith(b"QFI\xfb"):
            return None
        fixed = _Qcow2Fixed.unpack(head)
        if not fixed.backing_offset or not 0 < fixed.backing_size <= MAX_NAME:
            return None
        f.seek(fixed.backing_offset)
        return text(f.read(fixed.backing_size))


def read(r: Reader) -> tuple[DiskHeader, list[str]]:
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


def _qcow2_v3(r: Reader, fixed: _Qcow2Fixed) -> _Qcow2V3:
    if fixed.version == 2:
        return _Qcow2V3()
    data = r.exact(_QCOW2_HEADER.size, _QCOW2_V3.size, "qcow2 v3 header")
    v3 = _Qcow2V3._make(_QCOW2_V3.unpack(data))
    length = v3.header_length
    if length < 104 or length % 8 or length > fixed.cluster_size:
        raise r.malformed(f"header_length {length}")
    return v3


def _qcow2_extensions(r: Reader, fixed: _Qcow2Fixed, header_length: int) -> dict[int, bytes]:
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


def _qcow2_backing_file(r: Reader, fixed: _Qcow2Fixed) -> str | None:
    offset, size = fixed.backing_offset, fixed.backing_size
    if not (offset and size):
        return None
    if size > MAX_NAME or offset + size > fixed.cluster_size:
        raise r.malformed(f"a {size}-byte backing file name at byte {offset}")
    return text(r.exact(offset, size, "backing file name"))


def _qcow2_header(q: _Qcow2) -> DiskHeader:
    fixed, v3 = q.fixed, q.v3
    return DiskHeader(
        "qcow2",
        virtual_size=fixed.size,
        backing_file=q.backing_file,
        backing_format=q.extensiontext(_EXT_BACKING_FORMAT),
        data_file=q.extensiontext(_EXT_DATA_FILE),
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
    data_file = q.extensiontext(_EXT_DATA_FILE)
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
