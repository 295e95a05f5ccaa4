"""Roots: files outside the store that need its blobs, so gc keeps what they back onto.

A thin overlay made by ``export --link`` (or a VM's disk made by ``provision``) names a stored
blob as its qcow2 backing file; nothing in ``index.json`` knows about it, so without a record
``rm`` then ``gc`` would delete the chain under a running VM. Each outside file has one JSON
record, ``roots/<sha256 of its path>.json``, written atomically. gc marks from every record
whose file still backs onto the store and drops the others (the file is gone, or was rebased
or flattened).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagekit.core import atomic
from imagekit.core.digest import hexpart, sha256_bytes
from imagekit.disk import qcow2
from imagekit.errors import StoreError
from imagekit.oci.descriptor import check_digest
from imagekit.oci.layout import Layout

ROOTS_DIR = "roots"
_RECORD_MAX = 64 << 10  # a record is a few hundred bytes; read no more than this
_SCHEMA = 1


@dataclass(frozen=True)
class Root:
    """One outside user of stored blobs: its absolute path and what it needs kept."""

    path: Path
    kind: str  # "link": an overlay made by export --link; "vm": a VM disk made by provision
    manifest: str  # the image it was made from
    blobs: tuple[str, ...]  # the blobs its backing chain needs (the image's disk layers)
    ref: str | None  # the ref the image had when the root was made
    created: str
    command: str

    @classmethod
    def new(
        cls, path: Path, kind: str, manifest: str, blobs: tuple[str, ...], ref: str | None
    ) -> Root:
        """A root made now, by the command ``kind`` names (``link`` → ``export --link``)."""
        return cls(
            path=Path(os.path.abspath(path)),
            kind=kind,
            manifest=check_digest(manifest),
            blobs=tuple(check_digest(b) for b in blobs),
            ref=ref,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            command=_COMMANDS.get(kind, kind),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": _SCHEMA,
            "path": str(self.path),
            "kind": self.kind,
            "manifest": self.manifest,
            "blobs": list(self.blobs),
            "ref": self.ref,
            "created": self.created,
            "command": self.command,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Root:
        """Parse a record; StoreError names the field that is wrong."""
        if not isinstance(obj, dict) or obj.get("schemaVersion") != _SCHEMA:
            raise StoreError(f"not a root record of schemaVersion {_SCHEMA}")
        text: dict[str, str] = {}
        for key in ("path", "kind", "manifest", "created", "command"):
            value = obj.get(key)
            if not isinstance(value, str) or not value:
                raise StoreError(f"'{key}' is not a non-empty string")
            text[key] = value
        blobs, ref = obj.get("blobs"), obj.get("ref")
        if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
            raise StoreError("'blobs' is not a list of digests")
        if ref is not None and not isinstance(ref, str):
            raise StoreError("'ref' is not a string")
        if not os.path.isabs(text["path"]):
            raise StoreError("'path' is not absolute")
        return cls(
            path=Path(text["path"]),
            kind=text["kind"],
            manifest=check_digest(text["manifest"]),
            blobs=tuple(check_digest(b) for b in blobs),
            ref=ref,
            created=text["created"],
            command=text["command"],
        )


_COMMANDS = {"link": "export --link", "vm": "provision"}


def add(layout: Layout, root: Root) -> Root:
    """Record ``root``, replacing any record for the same path."""
    directory = layout.root / ROOTS_DIR
    directory.mkdir(exist_ok=True)
    data = (json.dumps(root.to_json(), indent=2, sort_keys=True) + "\n").encode()
    atomic.replace_file(_record_path(layout, root.path), data, temp=layout.new_temp())
    return root


def remove(layout: Layout, path: Path) -> bool:
    """Forget the root at ``path``; False when there was none."""
    record = _record_path(layout, Path(os.path.abspath(path)))
    try:
        record.unlink()
    except FileNotFoundError:
        return False
    atomic.fsync_dir(record.parent)
    return True


def get(layout: Layout, path: Path) -> Root | None:
    """The record for ``path``, if there is one."""
    record = _record_path(layout, Path(os.path.abspath(path)))
    return _load(record) if record.is_file() else None


def load_all(layout: Layout) -> list[Root]:
    """Every recorded root, sorted by path; StoreError when a record is damaged."""
    directory = layout.root / ROOTS_DIR
    if not directory.is_dir():
        return []
    records = sorted(p for p in directory.iterdir() if p.name.endswith(".json"))
    return sorted((_load(p) for p in records), key=lambda r: str(r.path))


def stale_reason(layout: Layout, root: Root) -> str | None:
    """Why ``root`` no longer needs the store (None while it does, or when that is unknown).

    Only what is certain drops a root: a file that cannot be read (another user's, a
    permission) keeps its blobs.
    """
    try:
        st = os.stat(root.path)
        if not stat.S_ISREG(st.st_mode):
            return "it is not a regular file any more"
        backing = qcow2.backing_name(root.path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "the file is gone"
        return None
    if backing is None:
        return "it no longer backs onto the store (it has no backing file)"
    named = root.path.parent / backing  # an absolute backing name replaces the parent
    blobs_dir = os.path.realpath(layout.blobs_dir)
    if os.path.realpath(named.parent) != blobs_dir or f"sha256:{named.name}" not in root.blobs:
        return f"it backs onto {backing} now, not onto the image's blobs"
    return None


def _record_path(layout: Layout, path: Path) -> Path:
    return layout.root / ROOTS_DIR / f"{hexpart(sha256_bytes(os.fsencode(path)))}.json"


def _load(record: Path) -> Root:
    try:
        with record.open("rb") as f:
            data = f.read(_RECORD_MAX + 1)
        if len(data) > _RECORD_MAX:
            raise StoreError(f"it is over {_RECORD_MAX} bytes")
        return Root.from_json(json.loads(data))
    except (OSError, ValueError, StoreError) as e:
        raise StoreError(
            f"root record {record} is damaged ({e}); delete it if no file outside the store "
            "still backs onto that image"
        ) from e
