"""Kickstart builds: an installer ISO and a kickstart become a disk, installed in a throwaway VM.

Everything that can be checked before a VM boots is checked first: the kickstart by
:mod:`.validate`, the installer ISO fetched and verified like any image (or a local ISO
digest-pinned) and its boot files read by :mod:`.iso`. :mod:`imagekit.guest.vm` runs the VM.
The build key covers the installer's digest, the rendered kickstart and every VM setting that
can change the disk, so an unchanged rebuild boots nothing. The kickstart enters it keyed with
the store's digest key and is recorded with its secrets redacted (:mod:`.redact`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit import provenance
from imagekit.core import atomic
from imagekit.core.digest import copy_hashing, file_digest, hexpart, identity, keyed_digest
from imagekit.disk import header, qemu_img
from imagekit.errors import CustomizeError, ImagekitError, RecipeError, VerificationError
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
from imagekit.recipe import KickstartSource, Recipe, load_installer
from imagekit.sources import http
from imagekit.sources.kickstart.iso import BootFiles, extract, make_oemdrv, read_boot_files
from imagekit.sources.kickstart.redact import Redacted, redact
from imagekit.sources.kickstart.validate import render, syntax_version, validate
from imagekit.sources.session import Session
from imagekit.verify.policy import PINNED

KICKSTART_CODE_VERSION = "1"


@dataclass(frozen=True)
class Installer:
    """The installer ISO as stored, and how far its origin was proven."""

    iso: Descriptor
    verification: Mapping[str, Any]
    origin: Mapping[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A kickstart build's inputs, validated; ``key`` is its build key, ``recorded`` the
    kickstart as the image may record it."""

    source: KickstartSource
    installer: Installer
    kickstart: str
    syntax: str
    key: str
    recorded: Redacted


def prepare(session: Session, recipe: Recipe, source: KickstartSource) -> Prepared:
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
            "kickstart": keyed_digest(session.layout.digest_key(), text.encode()),
            "vm": vm_parameters(source),
            "code": KICKSTART_CODE_VERSION,
        }
    )
    return Prepared(source, found, text, syntax, key, redact(text))


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


def _installer(session: Session, source: KickstartSource) -> Installer:
    store, progress = session.layout, session.progress
    if source.installer_path is None:
        parent = load_installer(source)
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


def install(store: Layout, recipe: Recipe, prepared: Prepared, progress: ProgressCallback) -> Image:
    """Boot the installer on a fresh disk, check and compact the result, store it with evidence."""
    boot = read_boot_files(store.blob_path(prepared.installer.iso.digest), recipe.arch)
    log = console_log_path(store, prepared.key)
    try:
        ran, stored = _run_installer(store, prepared, boot, log, progress)
    except ImagekitError as exc:  # the log stays for the user, the error is shown: no secret
        _scrub_log(store, log, prepared.recorded)
        exc.args = tuple(prepared.recorded.scrub(str(arg)) for arg in exc.args)
        raise
    evidence = [
        store.add_bytes(prepared.recorded.text.encode(), MEDIA_EVIDENCE_KICKSTART),
        store.add_bytes(_scrubbed(log.read_bytes(), prepared.recorded), MEDIA_EVIDENCE_CONSOLE_LOG),
    ]
    log.unlink()  # a blob now; the live copy stays only when a build fails
    config = {
        **provenance.base_config(recipe.name, recipe.version, recipe.arch),
        "source": _source_record(prepared, boot, ran, evidence),
        # What upstream vouched for is the installer; the disk was made here from it.
        "verification": {
            "level": prepared.installer.verification.get("level"),
            "signer": prepared.installer.verification.get("signer"),
            "of": "installer",
        },
        "disk": {
            "digest": stored.digest,
            "size": stored.size,
            "format": prepared.source.disk_format,
        },
    }
    manifest = store.write_manifest(
        config, [stored, *evidence], {CREATED_ANNOTATION: config["created"]}
    )
    return Image.from_descriptor(store, manifest)


def _run_installer(
    store: Layout, prepared: Prepared, boot: BootFiles, log: Path, progress: ProgressCallback
) -> tuple[installer.Ran, Descriptor]:
    """Boot the installer's kernel on a fresh disk in a scratch directory; store what it wrote."""
    source = prepared.source
    iso_path = store.blob_path(prepared.installer.iso.digest)
    workdir = store.new_temp()
    workdir.mkdir()
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
        return ran, _store_disk(store, disk, source, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _source_record(
    prepared: Prepared, boot: BootFiles, ran: installer.Ran, evidence: list[Descriptor]
) -> dict[str, Any]:
    """The config's ``source``: the installer, the kickstart as booted, and how the VM ran."""
    kickstart_blob, console_blob = evidence
    return {
        "kind": "kickstart",
        "installer": {
            "digest": prepared.installer.iso.digest,
            "size": prepared.installer.iso.size,
            "verification": dict(prepared.installer.verification),
            **prepared.installer.origin,
        },
        "kickstart": {
            "path": str(prepared.source.kickstart),
            "digest": kickstart_blob.digest,
            "syntax": prepared.syntax,
            "forced": prepared.source.force,
            "text": prepared.recorded.text,
            "secrets_redacted": len(prepared.recorded.secrets),
        },
        "boot": {"kernel": boot.kernel, "initrd": boot.initrd, "volume_id": boot.volume_id},
        "vm": vm_parameters(prepared.source),
        "qemu": ran.command,
        "accel": ran.accel,
        "seconds": ran.seconds,
        "console_log": console_blob.digest,
        "key": prepared.key,
    }


def console_log_path(store: Layout, key: str) -> Path:
    """Where a build's console is written live (``tail -f`` it); kept after a failure."""
    directory = store.cache_dir / "kickstart"
    store.access.make_dir(directory)
    return directory / f"{hexpart(key)}.console.log"


def _scrubbed(data: bytes, recorded: Redacted) -> bytes:
    """The console with the kickstart's secrets cut (an installer may echo its kickstart)."""
    return recorded.scrub(data.decode("utf-8", "surrogateescape")).encode(
        "utf-8", "surrogateescape"
    )


def _scrub_log(store: Layout, log: Path, recorded: Redacted) -> None:
    """Cut the secrets from the console log a failed build leaves for its user to read."""
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return
    scrubbed = _scrubbed(data, recorded)
    if scrubbed != data:
        atomic.replace_file(log, scrubbed, temp=store.new_temp(), mode=store.access.file_mode)


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
