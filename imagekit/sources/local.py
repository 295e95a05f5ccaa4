"""A local disk image of the user's own: inspected like a download, recorded as unverified."""

from __future__ import annotations

from pathlib import Path

from imagekit import catalog, provenance
from imagekit.core.digest import identity
from imagekit.core.refs import parse_ref
from imagekit.disk import header
from imagekit.errors import RecipeError
from imagekit.image import Image
from imagekit.oci.media import CREATED_ANNOTATION
from imagekit.sources.http import DiskRequest, Session, fetch_disk
from imagekit.verify.policy import UNVERIFIED, Expectation


def import_file(session: Session, path: Path, ref: str, *, disk_format: str | None = None) -> Image:
    """Store a local qcow2/raw, inspected like a download, recorded unverified, tagged ``ref``.

    The blob is readable by no one the file itself was not readable by (oci.access).
    """
    parsed = parse_ref(ref)
    if not path.is_file():
        raise RecipeError(f"{path} is not a file")
    detected = header.probe(path).format
    fmt = disk_format or detected
    if fmt not in header.SUPPORTED_FORMATS:
        raise RecipeError(f"{path} is {detected}; only qcow2 and raw images can be imported")
    layout = session.layout
    with layout.shared_lock():
        request = DiskRequest(path.resolve().as_uri(), fmt, Expectation(UNVERIFIED))
        disk, info, _ = fetch_disk(session, request)
        config = {
            **provenance.base_config(parsed.name, parsed.tag, None),
            "source": {"kind": "local", "path": str(path.resolve())},
            "verification": provenance.unverified_record(),
            "disk": provenance.disk_record(disk, info),
        }
        layout.access.narrow(layout.blob_path(disk.digest), path.stat())
        manifest = layout.write_manifest(
            config, [disk], {CREATED_ANNOTATION: str(config["created"])}
        )
        key = identity({"import": disk.digest})
        return catalog.tag(layout, str(parsed), key, manifest, session.progress)
