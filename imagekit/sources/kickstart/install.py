"""Kickstart builds: an installer ISO and a kickstart become a disk, installed in a throwaway VM.

Everything that can be checked before a VM boots is checked here: the kickstart is rendered and
validated with pykickstart (warnings count as errors, as ``ksvalidator`` treats them) and
refused if it would wait for a human; the installer ISO is fetched and verified like any image
(or a local ISO is digest-pinned) and its ``.treeinfo`` read with pycdlib, so the kernel and
initrd boot directly without mounting or remastering the ISO. :mod:`imagekit.installer` runs
the VM. The build key covers the installer's digest, the rendered kickstart and every VM
setting that can change the disk, so an unchanged rebuild boots nothing.
"""

from __future__ import annotations

import configparser
import io
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from imagekit import provenance
from imagekit.core.digest import copy_hashing, file_digest, hexpart, identity, sha256_bytes
from imagekit.disk import header, qemu_img
from imagekit.errors import CustomizeError, RecipeError, VerificationError
from imagekit.guest import vm as installer
from imagekit.image import Image
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import (
    CREATED_ANNOTATION,
    DISK_MEDIA,
    MEDIA_EVIDENCE_CONSOLE_LOG,
    MEDIA_EVIDENCE_KICKSTART,
    MEDIA_ISO,
)
from imagekit.progress import ProgressCallback, ProgressEvent
from imagekit.recipe import KickstartSource, Recipe
from imagekit.sources import http
from imagekit.verify.policy import PINNED

KICKSTART_CODE_VERSION = "1"
OEMDRV_LABEL = "OEMDRV"  # Anaconda reads ks.cfg from a volume so labelled, no boot option needed
_PLACEHOLDER = re.compile(r"\{(name|version|arch)\}")
# A script that opens a terminal or switches to one is waiting for a person at the console
# (the usual `exec < /dev/tty6 > /dev/tty6; chvt 6` prompt in %pre).
_INTERACTIVE = re.compile(r"/dev/tty|\bchvt\b")
_INCLUDE = re.compile(r"^\s*%(include|ksappend)\b", re.MULTILINE)


@dataclass(frozen=True)
class Installer:
    """The installer ISO as stored, and how far its origin was proven."""

    iso: Descriptor
    verification: Mapping[str, Any]
    origin: Mapping[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A kickstart build's inputs, validated; ``key`` is its build key."""

    source: KickstartSource
    installer: Installer
    kickstart: str
    syntax: str
    key: str


@dataclass(frozen=True)
class BootFiles:
    """What ``.treeinfo`` says boots the installer, and the label its stage2 is found by."""

    kernel: str
    initrd: str
    volume_id: str
    stage2: str | None


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}``, ``{version}``, ``{arch}`` only: shell braces in %post stay as written."""
    return _PLACEHOLDER.sub(lambda m: values[m[1]], text)


def syntax_version(source: KickstartSource, recipe_version: str) -> str:
    """The pykickstart handler: ``syntax``, else F<version>, else the newest Fedora known."""
    from pykickstart.version import versionMap  # type: ignore[import-untyped]

    if source.syntax:
        if source.syntax not in versionMap:
            raise RecipeError(
                f"kickstart syntax {source.syntax!r} is unknown to pykickstart; "
                f"known: {', '.join(sorted(versionMap))}"
            )
        return source.syntax
    if f"F{recipe_version}" in versionMap:
        return f"F{recipe_version}"
    # A release newer than this pykickstart (or a version that is no Fedora release number):
    # the newest Fedora syntax it knows is the closest check available.
    return f"F{max(int(k[1:]) for k in versionMap if re.fullmatch(r'F[0-9]+', k))}"


def validate(text: str, syntax: str, *, force: bool = False, where: str = "kickstart") -> None:
    """Parse ``text`` as ``syntax``; refuse errors, warnings and (unless ``force``) human waits."""
    from pykickstart.errors import KickstartError, KickstartParseWarning  # type: ignore[import-untyped]
    from pykickstart.parser import KickstartParser  # type: ignore[import-untyped]
    from pykickstart.version import makeVersion

    handler = makeVersion(syntax)
    parser = KickstartParser(handler, followIncludes=False, errorsAreFatal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KickstartParseWarning)
        try:
            parser.readKickstartFromString(text)
        except (KickstartError, KickstartParseWarning) as exc:
            lineno = getattr(exc, "lineno", None) or _line_of(text, handler)
            message = str(getattr(exc, "message", "") or exc).strip()
            at = f"line {lineno}: " if lineno else ""
            raise RecipeError(
                f"{where}: {at}{message} (pykickstart {syntax}; warnings count as errors, "
                "as in ksvalidator)"
            ) from exc
    if force:
        return
    problems = [*_waits_for_human(handler, text)]
    if problems:
        raise RecipeError(
            f"{where}: this kickstart would stop for a person at the console: "
            + "; ".join(problems)
            + ". Fix it, or set force = true in [source] to boot it anyway"
        )


def _line_of(text: str, handler: Any) -> int | None:
    """The line a warning came from: pykickstart keeps the line it was reading, not its number."""
    current = (getattr(handler, "currentLine", "") or "").strip()
    for number, line in enumerate(text.splitlines(), 1):
        if current and line.strip() == current:
            return number
    return None


def _waits_for_human(handler: Any, text: str) -> Iterator[str]:
    from pykickstart.constants import DISPLAY_MODE_GRAPHICAL, KS_WAIT  # type: ignore[import-untyped]

    mode = handler.displaymode
    if not mode.seen or mode.displayMode == DISPLAY_MODE_GRAPHICAL:
        yield "it needs `text` (or `cmdline`), or Anaconda starts its graphical interface"
    if getattr(handler, "vnc", None) is not None and handler.vnc.enabled:
        yield "`vnc` waits for a VNC client"
    action = handler.reboot
    if not action.seen or action.action == KS_WAIT:
        yield "it needs `reboot` or `poweroff`, or Anaconda waits for a key press at the end"
    elif getattr(action, "kexec", False):
        yield "`reboot --kexec` restarts inside the VM instead of ending it"
    if _INCLUDE.search(text):
        yield "%include/%ksappend read files the build key cannot see; inline them"
    for script in handler.scripts:
        if _INTERACTIVE.search(script.script):
            yield f"the script at line {script.lineno} reads from a terminal"


def prepare(session: http.Session, recipe: Recipe, source: KickstartSource) -> Prepared:
    """Render and validate the kickstart, then fetch (or find) and pin the installer ISO."""
    values = {"name": recipe.name, "version": recipe.version, "arch": recipe.arch}
    try:
        text = render(source.kickstart.read_text(encoding="utf-8"), values)
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read kickstart {source.kickstart}: {exc}") from exc
    syntax = syntax_version(source, recipe.version)
    validate(text, syntax, force=source.force, where=str(source.kickstart))
    found = _installer(session, source)
    key = identity(
        {
            "installer": found.iso.digest,
            "kickstart": sha256_bytes(text.encode()),
            "vm": vm_parameters(source),
            "code": KICKSTART_CODE_VERSION,
        }
    )
    return Prepared(source, found, text, syntax, key)


def vm_parameters(source: KickstartSource) -> dict[str, Any]:
    """The settings that can change what is installed (not the time limits, not the accel)."""
    return {
        "disk_size": source.disk_size,
        "disk_format": source.disk_format,
        "memory": source.memory,
        "vcpus": source.vcpus,
        "delivery": source.delivery,
        "kernel_args": list(source.kernel_args),
        "compress": source.compress,
    }


def _installer(session: http.Session, source: KickstartSource) -> Installer:
    store, progress = session.layout, session.progress
    if source.installer_path is None:
        parent = source.load_installer()
        image = http.pull(session, parent)
        isos = [layer for layer in image.manifest["layers"] if layer["mediaType"] == MEDIA_ISO]
        if not isos:
            raise RecipeError(
                f"installer recipe {parent.ref} yields a {image.format} disk, not an ISO; "
                'its [source] needs format = "iso"'
            )
        return Installer(
            Descriptor.from_json(isos[0]),
            image.config.get("verification") or {},
            {"recipe": parent.ref, "manifest": image.digest, "source": image.config.get("source")},
        )
    digest = "sha256:" + source.installer_sha256
    if not store.has_blob(digest):
        progress(ProgressEvent("store", f"storing installer {source.installer_path.name}"))
        _import_iso(store, source.installer_path, digest)
    iso = Descriptor(MEDIA_ISO, digest, store.blob_path(digest).stat().st_size)
    verification = {"level": PINNED, "signer": None, "digests": {"sha256": digest[7:]}}
    return Installer(iso, verification, {"path": str(source.installer_path)})


def _import_iso(store: Layout, path: Path, digest: str) -> None:
    """Copy a local ISO into the store, hashing as it goes; a mismatch is refused."""
    temp = store.new_temp(".iso")
    try:
        actual = copy_hashing(path, temp)
        if actual != digest:
            raise VerificationError(
                f"installer {path} has {actual}, but the recipe pins "
                f"{digest}: check the file, or pin the new digest if you trust it"
            )
        header.ensure_safe(temp, "iso")
        store.commit_file(temp, digest, MEDIA_ISO)
    finally:
        temp.unlink(missing_ok=True)


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


def install(store: Layout, recipe: Recipe, prepared: Prepared, progress: ProgressCallback) -> Image:
    """Boot the installer on a fresh disk, check and compact the result, store it with evidence."""
    source = prepared.source
    iso_path = store.blob_path(prepared.installer.iso.digest)
    boot = read_boot_files(iso_path, recipe.arch)
    workdir = store.new_temp()
    workdir.mkdir()
    log = console_log_path(store, prepared.key)
    try:
        files = extract(iso_path, {"vmlinuz": boot.kernel, "initrd.img": boot.initrd}, workdir)
        disk = workdir / "disk.qcow2"
        qemu_img.create(disk, "qcow2", source.disk_size)
        vm = installer.VM(
            kernel=files["vmlinuz"],
            initrd=files["initrd.img"],
            iso=iso_path,
            disk=disk,
            memory_mib=source.memory >> 20,
            vcpus=source.vcpus,
            kernel_args=(*source.kernel_args, f"inst.stage2=hd:LABEL={_label(boot.volume_id)}"),
            timeout=source.timeout,
            inactivity=source.inactivity,
            log=log,
        )
        with _delivered(prepared.kickstart, source.delivery, workdir) as (extra_args, oemdrv):
            ran = installer.run(vm.with_delivery(extra_args, oemdrv), progress=progress)
        stored = _store_disk(store, disk, source, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    evidence = [
        store.add_bytes(prepared.kickstart.encode(), MEDIA_EVIDENCE_KICKSTART),
        store.add_bytes(log.read_bytes(), MEDIA_EVIDENCE_CONSOLE_LOG),
    ]
    log.unlink()  # a blob now; the live copy stays only when a build fails
    config = {
        **provenance.base_config(recipe.name, recipe.version, recipe.arch),
        "source": {
            "kind": "kickstart",
            "installer": {
                "digest": prepared.installer.iso.digest,
                "size": prepared.installer.iso.size,
                "verification": dict(prepared.installer.verification),
                **prepared.installer.origin,
            },
            "kickstart": {
                "path": str(source.kickstart),
                "digest": evidence[0].digest,
                "syntax": prepared.syntax,
                "forced": source.force,
                "text": prepared.kickstart,
            },
            "boot": {"kernel": boot.kernel, "initrd": boot.initrd, "volume_id": boot.volume_id},
            "vm": vm_parameters(source),
            "qemu": ran.command,
            "accel": ran.accel,
            "seconds": ran.seconds,
            "console_log": evidence[1].digest,
            "key": prepared.key,
        },
        # What upstream vouched for is the installer; the disk was made here from it.
        "verification": {
            "level": prepared.installer.verification.get("level"),
            "signer": prepared.installer.verification.get("signer"),
            "of": "installer",
        },
        "disk": {"digest": stored.digest, "size": stored.size, "format": source.disk_format},
    }
    manifest = store.write_manifest(
        config, [stored, *evidence], {CREATED_ANNOTATION: config["created"]}
    )
    return Image.from_descriptor(store, manifest)


def console_log_path(store: Layout, key: str) -> Path:
    """Where a build's console is written live (``tail -f`` it); kept after a failure."""
    directory = store.cache_dir / "kickstart"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{hexpart(key)}.console.log"


def _label(volume_id: str) -> str:
    """Anaconda's escaping of a volume label in ``hd:LABEL=``: spaces become ``\\x20``."""
    return volume_id.replace(" ", "\\x20")


@contextmanager
def _delivered(
    kickstart: str, delivery: str, workdir: Path
) -> Iterator[tuple[tuple[str, ...], Path | None]]:
    """Kernel arguments and the OEMDRV ISO (if any) that hand the kickstart to the installer."""
    if delivery == "oemdrv":
        oemdrv = workdir / "oemdrv.iso"
        make_oemdrv(kickstart, oemdrv)
        yield (), oemdrv
        return
    with installer.serve_kickstart(kickstart) as port:
        yield (f"inst.ks=http://{installer.HOST_FROM_GUEST}:{port}/ks.cfg",), None


def _store_disk(
    store: Layout, disk: Path, source: KickstartSource, progress: ProgressCallback
) -> Descriptor:
    """Refuse a corrupt or empty disk, then copy it compactly into the store."""
    report = qemu_img.check(disk, "qcow2")
    allocated = report.get("allocated-clusters")
    if allocated == 0:
        raise CustomizeError(
            "the installer ended without writing to the disk: read its console log for why"
        )
    progress(ProgressEvent("store", "compacting the installed disk"))
    compact = store.new_temp("." + source.disk_format)
    try:
        compress = source.compress and source.disk_format == "qcow2"
        qemu_img.convert(disk, "qcow2", compact, source.disk_format, compress=compress)
        return store.commit_file(compact, file_digest(compact), DISK_MEDIA[source.disk_format])
    finally:
        compact.unlink(missing_ok=True)
