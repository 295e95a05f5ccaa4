"""gc's mark: every blob a root reaches, through manifests, overlay parents and qcow2 backing names.

What a blob keeps alive is a fact of its bytes, read once and kept in the edge memo (oci.memo).
A signature (``NAME:sha256-<hex>.sig``) is no root of its own: it lives as its subject does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from itertools import repeat
from pathlib import Path

from imagekit.core.refs import BLOB_NAME
from imagekit.disk import qcow2
from imagekit.errors import StoreError
from imagekit.oci.descriptor import manifest_descriptors, parents
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import MEDIA_INDEX, MEDIA_MANIFEST, REF_ANNOTATION, signed_digest
from imagekit.oci.memo import Memo

_MANIFEST_MAX = 4 << 20  # a JSON blob bigger than this is not a manifest worth parsing in gc


def mark(
    layout: Layout,
    roots: Iterable[str],
    marked: set[str],
    memo: Memo | None = None,
    missing: set[str] | None = None,
) -> set[str]:
    """Every digest reachable from ``roots`` through manifests and disk parent chains, added to
    ``marked`` (what an earlier mark reached). What each blob keeps alive is read from it once
    and kept in ``memo`` (blobs never change), so a mark costs no reads for blobs seen before.
    A digest whose blob is not in the store goes into ``missing``: its edges are unknown.
    """
    work = list(roots)
    while work:
        digest = work.pop()
        if digest in marked:
            continue
        marked.add(digest)
        known = memo.get(digest) if memo is not None else None
        if type(known) is list and all(map(isinstance, known, repeat(str))):
            work.extend(known)
            continue
        children = blob_children(layout, digest)
        if children is None:
            if missing is not None:
                missing.add(digest)
            continue
        if memo is not None:
            memo.put(digest, children)
        work.extend(children)
    return marked


def blob_children(layout: Layout, digest: str) -> list[str] | None:
    """What a blob keeps alive: a manifest's descriptors and parents, a qcow2's backing
    (None: the blob is not in the store)."""
    path = layout.blob_path(digest)
    try:
        with path.open("rb") as f:
            head = f.read(1)
            f.seek(0)
            if head == b"Q":
                return _qcow2_backing(path)
            if head != b"{" or os.fstat(f.fileno()).st_size > _MANIFEST_MAX:
                return []
            obj = json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return []  # JSON-looking but not JSON: a config or evidence blob, not a manifest
    if not isinstance(obj, dict) or not _is_manifest_like(obj):
        return []
    try:
        descriptors = manifest_descriptors(obj)
        return [d.digest for d in descriptors] + parents(descriptors)
    except StoreError as e:
        raise StoreError(
            f"gc stopped, nothing removed: manifest {digest} is malformed ({e}); "
            "run `imagekit fsck`"
        ) from e


def _is_manifest_like(obj: dict[str, object]) -> bool:
    if obj.get("mediaType") in (MEDIA_MANIFEST, MEDIA_INDEX):
        return True
    return obj.get("schemaVersion") == 2 and ("layers" in obj or "manifests" in obj)


def _qcow2_backing(path: Path) -> list[str]:
    """The blob a qcow2 overlay in the store names as its backing file, which qemu will open.

    Followed by gc as well as the parent annotation, since deleting a live backing file
    destroys every overlay on it.
    """
    name = os.path.basename(qcow2.backing_name(path) or "")
    return ["sha256:" + name] if BLOB_NAME.fullmatch(name) else []


def mark_signatures(
    layout: Layout,
    found: Iterable[tuple[str | None, str]],
    marked: set[str],
    memo: Memo | None,
    dry_run: bool,
    missing: set[str],
) -> list[str]:
    """Mark the signatures (of the entries ``found``: ref, digest) of kept manifests; untag
    the others (unless ``dry_run``)."""
    dropped = []
    for ref, digest in found:
        subject = signed_subject(ref)
        if subject is None or ref is None:
            continue
        if subject in marked:
            mark(layout, [digest], marked, memo, missing)
            continue
        dropped.append(ref)
    if dropped and not dry_run:
        layout.untag_all(dropped)
    return dropped


def signed(entry: Descriptor) -> str | None:
    """The manifest digest a signature entry signs (None: the entry is not a signature)."""
    return signed_subject(ref_of(entry))


def signed_subject(ref: str | None) -> str | None:
    """The manifest digest a signature's ref signs (None: not a signature's ref)."""
    tag = (ref or "").partition(":")[2]
    return signed_digest(tag) if tag.endswith(".sig") else None


def ref_of(entry: Descriptor) -> str | None:
    return entry.annotations.get(REF_ANNOTATION)
