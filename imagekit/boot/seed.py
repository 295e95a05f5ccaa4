"""NoCloud seeds: an ISO 9660 volume labelled ``cidata``, or the same files served over HTTP.

The ISO is what ``cloud-localds`` makes with genisoimage (``-volid cidata -joliet -rock``),
written in-process with pycdlib. pycdlib stamps every date with ``time.time()`` in local
time, so while a seed is written its clock is pinned to :data:`SEED_EPOCH` in UTC: the same
inputs give the same bytes on any host, in any time zone. A seed holds the user's keys and
settings; it is written where the user asks and nothing of it enters the store.

The seedless form (for local boots) hands cloud-init the same files from a loopback HTTP server,
named by the SMBIOS serial ``ds=nocloud;s=http://10.0.2.2:PORT/``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import struct_time
from types import ModuleType
from typing import Any

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.pycdlib
import pycdlib.utils

from imagekit.boot.cloudconfig import SeedFiles, SeedSpec, render
from imagekit.core.atomic import replace_file
from imagekit.core.digest import sha256_bytes
from imagekit.guest import vm

LABEL = "cidata"  # what cloud-init's NoCloud looks for (it also accepts CIDATA)
SEED_EPOCH = 946684800.0  # 2000-01-01T00:00:00Z: every date in the ISO
# NoCloud's file names; ISO 9660 level 3 allows no '-', so plain names come from Rock Ridge
# (what Linux shows) and Joliet (what other systems show).
_ISO_NAMES = {
    "meta-data": "/META_DATA.;1",
    "user-data": "/USER_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
    "vendor-data": "/VENDOR_DATA.;1",
}
_CLOCK_USERS: tuple[ModuleType, ...] = (
    pycdlib.pycdlib,
    pycdlib.headervd,
    pycdlib.dates,
    pycdlib.utils,
)
_clock_lock = threading.Lock()


@dataclass(frozen=True)
class SeedReport:
    """What was written: never the content, which may hold the user's secrets."""

    path: Path
    digest: str
    size: int
    instance_id: str
    files: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "digest": self.digest,
            "size": self.size,
            "instance_id": self.instance_id,
            "files": list(self.files),
            "label": LABEL,
        }


def make_nocloud_seed(dest: Path, spec: SeedSpec) -> SeedReport:
    """Write the seed ISO for ``spec`` to ``dest`` (atomically); RecipeError on a bad input."""
    seed = render(spec)
    data = iso_bytes(seed)
    dest = Path(dest)
    replace_file(dest, data)
    return SeedReport(dest, sha256_bytes(data), len(data), seed.instance_id, tuple(seed.files))


def iso_bytes(seed: SeedFiles) -> bytes:
    """The ISO 9660 image (Joliet and Rock Ridge, label ``cidata``) holding ``seed``'s files."""
    out = io.BytesIO()
    with _pinned_clock():
        image = pycdlib.PyCdlib()
        image.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
        for name in sorted(seed.files):
            data = seed.files[name]
            image.add_fp(
                io.BytesIO(data), len(data), _ISO_NAMES[name], rr_name=name, joliet_path="/" + name
            )
        image.write_fp(out)
        image.close()
    return out.getvalue()


class _Clock:
    """``time`` as pycdlib sees it while a seed is written: fixed, and in UTC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return SEED_EPOCH

    @staticmethod
    def localtime(seconds: float | None = None) -> struct_time:
        return time.gmtime(SEED_EPOCH if seconds is None else seconds)


@contextmanager
def _pinned_clock() -> Iterator[None]:
    """Give pycdlib's modules the fixed clock; only pycdlib is affected, and only meanwhile."""
    with _clock_lock:
        saved = [module.time for module in _CLOCK_USERS]
        for module in _CLOCK_USERS:
            module.time = _Clock()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module, original in zip(_CLOCK_USERS, saved, strict=True):
                module.time = original  # type: ignore[attr-defined]


def smbios_serial(port: int) -> str:
    """The SMBIOS serial that points cloud-init's NoCloud at ``http://10.0.2.2:PORT/``."""
    return f"ds=nocloud;s=http://{vm.HOST_FROM_GUEST}:{port}/"  # the trailing slash is required


@contextmanager
def serve_seed(seed: SeedFiles) -> Iterator[int]:
    """Serve the seed's files on 127.0.0.1 for a seedless boot; yields the port.

    cloud-init asks for ``meta-data``, ``user-data`` and ``vendor-data``: a missing vendor-data
    is served empty, as cloud-localds would leave it out.
    """
    files = {"vendor-data": b"", **seed.files}
    with vm.serve_files(files) as port:
        yield port
