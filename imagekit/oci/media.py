"""Every media type, annotation and format map imagekit writes, in one place (docs/oci.md)."""

from __future__ import annotations

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.imagekit.image.v1"
MEDIA_CONFIG = "application/vnd.imagekit.config.v1+json"
MEDIA_DISK_QCOW2 = "application/vnd.imagekit.disk.qcow2"
MEDIA_DISK_RAW = "application/vnd.imagekit.disk.raw"
MEDIA_ISO = "application/vnd.imagekit.iso"  # an installer ISO (source format "iso")
MEDIA_EVIDENCE_CHECKSUM = "application/vnd.imagekit.evidence.checksum"
MEDIA_EVIDENCE_SIGNATURE = "application/vnd.imagekit.evidence.signature"
MEDIA_EVIDENCE_KICKSTART = "application/vnd.imagekit.evidence.kickstart"
MEDIA_EVIDENCE_CONSOLE_LOG = "application/vnd.imagekit.evidence.console-log"  # a kickstart install
# The serial console of a recipe's [test] boot: it proves this image booted, not its base.
MEDIA_EVIDENCE_BOOT_LOG = "application/vnd.imagekit.evidence.boot-log"

# Format name <-> media type of a disk layer (an ISO is stored, never booted as a layer).
DISK_MEDIA = {"qcow2": MEDIA_DISK_QCOW2, "raw": MEDIA_DISK_RAW}
BLOB_MEDIA = {**DISK_MEDIA, "iso": MEDIA_ISO}
DISK_FORMATS = {media: fmt for fmt, media in DISK_MEDIA.items()}

REF_ANNOTATION = "org.opencontainers.image.ref.name"
CREATED_ANNOTATION = "org.opencontainers.image.created"
PARENT_ANNOTATION = "org.imagekit.parent"
# What made a ref (recipe + resolved file + layers): equal identity, equal image; a cache hit.
IDENTITY_ANNOTATION = "org.imagekit.recipe.digest"
# The concrete file a pull resolved to, in the manifest itself: enough to repeat the pull.
SOURCE_URL_ANNOTATION = "org.imagekit.source.url"
SOURCE_FILENAME_ANNOTATION = "org.imagekit.source.filename"
SOURCE_DIGEST_ANNOTATION = "org.imagekit.source.digest"


def qemu_format(disk_format: str) -> str:
    """qemu reads an ISO as raw bytes; it has no "iso" format of its own."""
    return "raw" if disk_format == "iso" else disk_format
