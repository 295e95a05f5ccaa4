"""Every media type, annotation and format map imagekit writes, in one place (docs/oci.md)."""

from __future__ import annotations

import re

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

# A nightly builder's claim on an input key (docs/nightly.md): an artifact whose config and one
# layer are the empty descriptor, the claim itself in annotations.
MEDIA_CLAIM = "application/vnd.imagekit.claim.v1"
MEDIA_EMPTY = "application/vnd.oci.empty.v1+json"
CLAIM_BUILDER_ANNOTATION = "org.imagekit.claim.builder"
CLAIM_LEASE_ANNOTATION = "org.imagekit.claim.lease"

REF_ANNOTATION = "org.opencontainers.image.ref.name"
# A disk layer's file name for tools that save layers as files (oras pull): the blob's hex, the
# very name an overlay's qcow2 header gives its parent, so the saved files form a usable chain.
TITLE_ANNOTATION = "org.opencontainers.image.title"
CREATED_ANNOTATION = "org.opencontainers.image.created"
PARENT_ANNOTATION = "org.imagekit.parent"
# What made a ref (recipe + resolved file + layers): equal identity, equal image; a cache hit.
IDENTITY_ANNOTATION = "org.imagekit.recipe.digest"
# The concrete file a pull resolved to, in the manifest itself: enough to repeat the pull.
SOURCE_URL_ANNOTATION = "org.imagekit.source.url"
SOURCE_FILENAME_ANNOTATION = "org.imagekit.source.filename"
SOURCE_DIGEST_ANNOTATION = "org.imagekit.source.digest"

# cosign's key-based signatures (docs/signing.md): a manifest at tag ``sha256-<hex>.sig`` whose
# config is an OCI image config and whose layers are simple-signing payloads, each signed in an
# annotation. A registry without the referrers API (Debian's registry 2.8) holds them as tags.
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# The fingerprint of the key a signature says made it: a hint for error messages, never trusted.
SIGNER_ANNOTATION = "org.imagekit.signature.key"
_SIGNATURE_TAG = re.compile(r"sha256-([0-9a-f]{64})\.sig")


def signature_tag(digest: str) -> str:
    """The tag cosign stores the signatures of manifest ``digest`` under: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-", 1) + ".sig"


def signed_digest(tag: str) -> str | None:
    """The manifest digest a signature tag names (the inverse of :func:`signature_tag`)."""
    found = _SIGNATURE_TAG.fullmatch(tag)
    return f"sha256:{found[1]}" if found else None


# What a registry client asks for and accepts when it reads a manifest (an index: multi-arch).
MANIFEST_MEDIA = (MEDIA_MANIFEST, MEDIA_INDEX)

# Distribution architecture names (``uname -m``, recipes) <-> OCI platform names (GOARCH).
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def oci_arch(arch: str) -> str:
    """The OCI platform name of ``arch`` (``x86_64`` -> ``amd64``; ``amd64`` stays as it is)."""
    return OCI_ARCH.get(arch, arch)


def qemu_format(disk_format: str) -> str:
    """qemu reads an ISO as raw bytes; it has no "iso" format of its own."""
    return "raw" if disk_format == "iso" else disk_format
