"""Check a stored image against a profile: one read-only appliance launch on its stored chain.

The top disk blob is attached read-only (libguestfs puts a throwaway overlay in front of it),
its backing blobs resolve by name next to it, and the guest's file systems are mounted
read-only where its fstab says: nothing of the image is written and nothing is booted.
"""

from __future__ import annotations

from typing import Any

from imagekit.check.facts import READERS, Guest
from imagekit.check.profile import Profile
from imagekit.check.report import CheckReport, evaluate
from imagekit.errors import CheckError
from imagekit.guest import appliance
from imagekit.image import Image
from imagekit.oci.layout import Layout
from imagekit.oci.media import DISK_FORMATS
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress


def check_image(
    layout: Layout,
    image: Image,
    profile: Profile,
    *,
    progress: ProgressCallback = ignore_progress,
) -> CheckReport:
    """Read every check of ``profile`` from ``image``; the report says which passed."""
    top = image.disk
    drive = appliance.Drive(layout.blob_path(top.digest), DISK_FORMATS[top.media_type], True)
    progress(ProgressEvent("check", f"{image.ref or image.digest} against {profile.name}"))
    with appliance.launched([drive], progress=progress) as handle:
        guest = _mounted(handle)
        results = tuple(
            evaluate(check, READERS[check.read](guest, check.name)) for check in profile.checks
        )
        os_info = _os(handle, guest.root)
    return CheckReport(image.ref, image.digest, top.digest, profile, results, os_info)


def _mounted(handle: Any) -> Guest:
    """The one OS on the disk, its file systems mounted read-only, parents first."""
    try:
        roots: list[str] = handle.inspect_os()
    except RuntimeError as exc:
        raise CheckError(f"cannot inspect the image: {exc}") from exc
    if len(roots) != 1:
        found = "no operating system" if not roots else f"{len(roots)} operating systems"
        raise CheckError(f"{found} found on the image: a profile describes exactly one")
    root = roots[0]
    mountpoints: dict[str, str] = dict(handle.inspect_get_mountpoints(root))
    for mountpoint in sorted(mountpoints, key=lambda m: (len(m), m)):
        try:
            handle.mount_ro(mountpoints[mountpoint], mountpoint)
        except RuntimeError as exc:
            raise CheckError(
                f"cannot mount {mountpoints[mountpoint]} on {mountpoint} read-only: {exc}"
            ) from exc
    return Guest(handle, root, mountpoints)


def _os(handle: Any, root: str) -> dict[str, Any]:
    """What inspection says the image is: the report's heading."""
    return {
        "distro": handle.inspect_get_distro(root),
        "product_name": handle.inspect_get_product_name(root),
        "major": handle.inspect_get_major_version(root),
        "minor": handle.inspect_get_minor_version(root),
        "arch": handle.inspect_get_arch(root),
        "package_format": handle.inspect_get_package_format(root),
    }
