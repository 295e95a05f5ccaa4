"""The one builder of provenance: the JSON config blob every stored image carries.

Each source kind adds its own ``source`` record; what every image says (who made it, when, from
which recipe, how it was verified, what the disk is) is written here, so the five places that
store an image cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from imagekit._version import __version__
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import MEDIA_EVIDENCE_CHECKSUM, MEDIA_EVIDENCE_SIGNATURE
from imagekit.recipe import Recipe
from imagekit.verify.policy import UNVERIFIED, Expectation

# qemu-img info fields worth keeping; the rest (temp file names) would make provenance noisy.
_INFO_FIELDS = ("format", "virtual-size", "cluster-size", "format-specific", "dirty-flag")


def base_config(name: str, version: str, arch: str | None) -> dict[str, Any]:
    """What every config starts with: the imagekit that wrote it, when, and the image's name."""
    return {
        "imagekit": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "name": name,
        "version": version,
        "arch": arch,
    }


def recipe_config(recipe: Recipe) -> dict[str, Any]:
    """``base_config`` for an image made from ``recipe``, with the recipe itself recorded.

    Its text is recorded as it is: a recipe with ``[[customize]]`` steps must come as
    ``customize.recorded_recipe`` gives it (build does so), so that no secret is recorded.
    """
    return {
        **base_config(recipe.name, recipe.version, recipe.arch),
        "recipe": {
            "digest": recipe.digest,
            "path": str(recipe.path) if recipe.path else None,
            "text": recipe.text,
            "pin": recipe.pin or None,
        },
    }


def verification_record(expect: Expectation, evidence: Sequence[Descriptor]) -> dict[str, Any]:
    """The level reached, who signed, what the bytes had to be, and the evidence blobs."""
    by_media = {d.media_type: d.digest for d in evidence}
    return {
        "level": expect.level,
        "signer": expect.signer,
        "digests": dict(expect.digests),
        "size": expect.size,
        "checksum_file": by_media.get(MEDIA_EVIDENCE_CHECKSUM),
        "signature": by_media.get(MEDIA_EVIDENCE_SIGNATURE),
    }


def unverified_record() -> dict[str, Any]:
    """For disks imagekit made itself (scratch) or was handed: nothing upstream vouches."""
    return verification_record(Expectation(UNVERIFIED), [])


def disk_record(disk: Descriptor, info: Mapping[str, Any]) -> dict[str, Any]:
    """The disk blob and what ``qemu-img info`` says of it."""
    return {
        "digest": disk.digest,
        "size": disk.size,
        **{key: info[key] for key in _INFO_FIELDS if key in info},
    }


def test_record(boot: Mapping[str, Any], console_log: Descriptor) -> dict[str, Any]:
    """What a recipe's ``[test]`` proved: the image booted to ready, how, how fast, its console.

    ``boot`` is the boot check's report (``BootReport.to_json()``); its paths and qemu command
    line name temporary files and are left out.
    """
    return {
        "passed": True,
        "reason": boot["reason"],
        "marker": boot["marker"],
        "seconds": boot["seconds"],
        "accel": boot["accel"],
        "seed": boot["seed"],
        "ssh_output": boot["ssh_output"],
        "disk": boot["disk"],
        "console_log": console_log.to_json(),
    }


def check_record(report: Mapping[str, Any], required: bool) -> dict[str, Any]:
    """A ``[check]`` report as the image records it: of its disk, not of a ref or manifest."""
    return {
        **{key: value for key, value in report.items() if key not in ("ref", "image")},
        "required": required,
    }
