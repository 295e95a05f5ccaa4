"""What every reliability test asserts about a store after the fault: it is still consistent."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit.store import Store

if TYPE_CHECKING:
    from tests.conftest import Upstream


def misnamed_blobs(store: Store) -> list[str]:
    """Blobs whose bytes do not hash to their name (must always be empty)."""
    wrong = []
    for path in sorted(store.blobs_dir.iterdir()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != path.name:
            wrong.append(path.name)
    return wrong


def dangling_refs(store: Store) -> list[str]:
    """Refs whose manifest, config or layers are missing from blobs/ (must always be empty)."""
    missing = []
    for ref, descriptor in store.refs():
        if not store.has_blob(descriptor.digest):
            missing.append(f"{ref} -> manifest {descriptor.digest}")
            continue
        manifest = store.manifest(descriptor.digest)
        for layer in [manifest["config"], *manifest["layers"]]:
            if not store.has_blob(layer["digest"]):
                missing.append(f"{ref} -> {layer['digest']}")
    return missing


def assert_consistent(store: Store) -> None:
    """fsck is clean, every blob hashes to its name, and no ref points at a missing blob."""
    report = store.fsck()
    assert report.ok, report.problems
    assert misnamed_blobs(store) == []
    assert dangling_refs(store) == []


def partial_size(store: Store) -> int:
    """Bytes kept in tmp/*.part for resuming (0 when there is none)."""
    return sum(p.stat().st_size for p in store.tmp_dir.glob("*.part"))


def files_outside(root: Path, store: Store) -> list[str]:
    """Everything under ``root`` that is not inside the store (for 'nothing written outside')."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.resolve().is_relative_to(store.root.resolve())
    )


def publish_alone(upstream: Upstream, filename: str, data: bytes, name: str, **kw: Any) -> Path:
    """Publish ``data`` with a CHECKSUM file of its own and return a recipe for it.

    Upstream.publish shares one CHECKSUM URL, which the upstream metadata cache keeps; a file
    of its own per image lets one test pull several images through one store.
    """
    checksum = f"{filename}.CHECKSUM"
    upstream.publish(filename, data, checksum_name=checksum, **kw)
    path = upstream.recipe(filename, name=name)
    path.write_text(path.read_text().replace("/pub/CHECKSUM", f"/pub/{checksum}"))
    return path
