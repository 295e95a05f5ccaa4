"""The Image object that pull, import and build hand back to callers: a view of one manifest."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from imagekit.core.refs import DIGEST_RE
from imagekit.errors import StoreError
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import DISK_FORMATS, REF_ANNOTATION
from imagekit.oci.memo import Memo
from imagekit.progress import ProgressCallback, ignore_progress

if TYPE_CHECKING:
    from imagekit import export

DIGEST = re.compile(DIGEST_RE)


@dataclass(frozen=True)
class Image:
    """A stored image: its manifest, its provenance (config) and the disk a hypervisor opens."""

    store: Layout
    ref: str | None
    digest: str  # manifest digest
    manifest: dict[str, Any]
    config: dict[str, Any]
    cached: bool = False  # True when pull/build found it already stored and did no work

    @classmethod
    def load(cls, store: Layout, ref_or_digest: str, *, cached: bool = False) -> Image:
        descriptor = store.resolve(ref_or_digest)
        return cls.from_descriptor(store, descriptor, cached=cached)

    @classmethod
    def from_descriptor(
        cls, store: Layout, descriptor: Descriptor, *, cached: bool = False
    ) -> Image:
        manifest = store.manifest(descriptor.digest)
        config = store.read_json(manifest["config"]["digest"])
        if not isinstance(config, dict):
            raise StoreError(
                f"config of {descriptor.digest} is not a JSON object; run imagekit fsck"
            )
        return cls(
            store=store,
            ref=descriptor.annotations.get(REF_ANNOTATION),
            digest=descriptor.digest,
            manifest=manifest,
            config=config,
            cached=cached,
        )

    @property
    def disks(self) -> list[Descriptor]:
        """Disk layers, base first."""
        return [
            Descriptor.from_json(layer)
            for layer in self.manifest["layers"]
            if layer["mediaType"] in DISK_FORMATS
        ]

    @property
    def disk(self) -> Descriptor:
        """The top disk layer: the one a VM boots (it backs onto the others, if any)."""
        disks = self.disks
        if not disks:
            raise StoreError(f"image {self.digest} has no disk layer; run imagekit fsck")
        return disks[-1]

    @property
    def disk_digest(self) -> str:
        return self.disk.digest

    @property
    def format(self) -> str:
        return DISK_FORMATS[self.disk.media_type]

    @property
    def path(self) -> Path:
        """The stored disk file. Read-only: boot it through an overlay or export a copy."""
        return self.store.blob_path(self.disk.digest)

    @property
    def verification(self) -> str:
        return str(self.config.get("verification", {}).get("level", "unverified"))

    @property
    def provenance(self) -> dict[str, Any]:
        return self.config

    def export(
        self,
        dest: Path | str,
        *,
        progress: ProgressCallback = ignore_progress,
        **options: Unpack[export.ExportOptions],
    ) -> Path:
        """A standalone copy of the whole chain at ``dest`` (or a thin overlay with ``link``).

        ``options``: ``disk_format`` (qcow2, raw, vmdk, vdi, vhdx), ``compress``, ``sparse``,
        ``link`` (the overlay is recorded as a root, so gc keeps its backing chain) and
        ``force`` (replace an existing file). ``dest`` may be a device, a FIFO, or ``"-"`` for
        stdout; :mod:`imagekit.export` says what is written how and what is refused.
        """
        from imagekit import export  # the export code loads when an image is exported

        source = export.Source(self.store, self.digest, self.ref, tuple(self.disks))
        return export.export_disk(source, dest, progress=progress, **options)

    def summary(self) -> dict[str, Any]:
        """The fields scripts rely on (``pull --json``)."""
        blobs = f"{self.store.blobs_dir}/"
        return _summary(blobs, self.ref, self.digest, self.facts(), cached=self.cached)

    def facts(self) -> dict[str, Any]:
        """What a summary says of the manifest itself, whatever its ref: memoized by
        :func:`summaries`."""
        disk = self.disk
        return {
            "image": disk.digest,
            "format": DISK_FORMATS[disk.media_type],
            "size": disk.size,
            "verification": self.verification,
        }


def summaries(store: Layout, tagged: Sequence[tuple[str, Descriptor]]) -> list[dict[str, Any]]:
    """:meth:`Image.summary` of each tagged image, reading only the manifests not seen before.

    A manifest and its config never change, so what a summary takes from them is kept in a memo
    (oci.memo): ``imagekit images`` at 10,000 refs reads the index, not 20,000 blobs.
    """
    memo = Memo(store, "summaries")
    blobs = f"{store.blobs_dir}/"  # a path per row: pathlib would cost more than the rest
    rows = []
    for ref, descriptor in tagged:
        facts = memo.get(descriptor.digest)
        if not _facts_shape(facts):
            facts = Image.from_descriptor(store, descriptor).facts()
            memo.put(descriptor.digest, facts)
        rows.append(_summary(blobs, ref, descriptor.digest, facts))
    memo.save(keep=[d.digest for _, d in tagged])
    return rows


def _summary(
    blobs: str, ref: str | None, digest: str, facts: dict[str, Any], *, cached: bool = False
) -> dict[str, Any]:
    return {
        "ref": ref,
        "digest": digest,
        "image": facts["image"],
        "path": blobs + facts["image"].removeprefix("sha256:"),
        "format": facts["format"],
        "size": facts["size"],
        "verification": facts["verification"],
        "cached": cached,
    }


def _facts_shape(facts: Any) -> bool:
    return (
        isinstance(facts, dict)
        and all(isinstance(facts.get(k), str) for k in ("image", "format", "verification"))
        and isinstance(facts.get("size"), int)
        and bool(DIGEST.fullmatch(facts["image"]))
    )
