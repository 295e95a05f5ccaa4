"""Installer ISOs read and OEMDRV discs written with pycdlib, never mounted or remastered.

The installer's ``.treeinfo`` names the kernel and initrd, which boot directly; the kickstart
reaches Anaconda on a tiny ISO labelled OEMDRV when it is not served over HTTP.
"""

from __future__ import annotations

import configparser
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from imagekit.errors import CustomizeError

OEMDRV_LABEL = "OEMDRV"  # Anaconda reads ks.cfg from a volume so labelled, no boot option needed


@dataclass(frozen=True)
class BootFiles:
    """What ``.treeinfo`` says boots the installer, and the label its stage2 is found by."""

    kernel: str
    initrd: str
    volume_id: str
    stage2: str | None


def read_boot_files(iso: Path, arch: str) -> BootFiles:
    """Kernel, initrd and stage2 from the ISO's ``.treeinfo`` (productmd or legacy format)."""
    with _opened(iso) as image:
        text = _read(image, "/.treeinfo", iso).decode("utf-8", "replace")
        volume_id = image.pvd.volume_identifier.decode("ascii", "replace").strip()
    treeinfo = configparser.ConfigParser(interpolation=None)
    try:
        treeinfo.read_string(text)
    except configparser.Error as exc:
        raise CustomizeError(f"{iso}: unreadable .treeinfo: {exc}") from exc
    platforms = [f"images-{arch}"]
    for section in ("tree", "general"):  # productmd 1.x, then the legacy format
        tree_arch = treeinfo.get(section, "arch", fallback=arch)
        if tree_arch != arch:
            raise CustomizeError(f"{iso} is an installer for {tree_arch}, not {arch}")
        listed = treeinfo.get(section, "platforms", fallback="").split(",")
        platforms += [f"images-{p.strip()}" for p in listed if p.strip()]
    for section in platforms:
        if treeinfo.has_option(section, "kernel") and treeinfo.has_option(section, "initrd"):
            return BootFiles(
                kernel=treeinfo.get(section, "kernel"),
                initrd=treeinfo.get(section, "initrd"),
                volume_id=volume_id,
                stage2=treeinfo.get("stage2", "mainimage", fallback=None),
            )
    raise CustomizeError(
        f"{iso}: .treeinfo names no kernel and initrd for {arch} (sections: "
        f"{', '.join(treeinfo.sections())}); is this an installer ISO for {arch}?"
    )


def extract(iso: Path, names: Mapping[str, str], dest: Path) -> dict[str, Path]:
    """Copy files named by ISO path out of ``iso`` into ``dest``; returns key -> local path."""
    out = {}
    with _opened(iso) as image:
        for key, name in names.items():
            target = dest / key
            with target.open("wb") as f:
                _read_into(image, "/" + name.lstrip("/"), f, iso)
            out[key] = target
    return out


def make_oemdrv(kickstart: str, dest: Path) -> None:
    """A tiny ISO labelled OEMDRV with ks.cfg at its root, which Anaconda finds by itself."""
    data = kickstart.encode()
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident=OEMDRV_LABEL)
    image.add_fp(io.BytesIO(data), len(data), "/KS.CFG;1", rr_name="ks.cfg", joliet_path="/ks.cfg")
    image.write(str(dest))
    image.close()


@contextmanager
def _opened(iso: Path) -> Iterator[pycdlib.PyCdlib]:
    image = pycdlib.PyCdlib()
    try:
        image.open(str(iso))
    except (PyCdlibException, OSError) as exc:
        raise CustomizeError(f"{iso} is not a readable ISO 9660 image: {exc}") from exc
    try:
        yield image
    finally:
        image.close()


def _read(image: pycdlib.PyCdlib, path: str, iso: Path) -> bytes:
    buffer = io.BytesIO()
    _read_into(image, path, buffer, iso)
    return buffer.getvalue()


def _read_into(image: pycdlib.PyCdlib, path: str, out: Any, iso: Path) -> None:
    """Read by Rock Ridge name, else Joliet, as Linux would show the file; never mount."""
    if image.has_rock_ridge():
        where = {"rr_path": path}
    elif image.has_joliet():
        where = {"joliet_path": path}
    else:
        where = {"iso_path": path.upper() + ";1"}
    try:
        image.get_file_from_iso_fp(out, **where)
    except PyCdlibException as exc:
        raise CustomizeError(f"{iso} has no {path}: {exc}; is it an installer ISO?") from exc
