"""The local content-addressed store: an OCI image layout that skopeo, oras and registries read.

Blobs are named by the sha256 of their bytes and never change; refs live in ``index.json``.
Every write goes to ``tmp/`` first, is fsynced, then renamed into place, so a kill -9 at any
instant leaves either the old or the new state. ``.lock`` is held shared by anything that adds
to the store and exclusively by gc, so gc never sweeps a blob whose manifest is still being made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from imagekit.core import atomic
from imagekit.core.digest import canonical_json, hash_stream, hexpart, sha256_bytes
from imagekit.core.locking import FileLock
from imagekit.core.refs import parse_ref
from imagekit.errors import StoreError
from imagekit.oci import index, lookup
from imagekit.oci.access import Access
from imagekit.oci.descriptor import Descriptor as Descriptor  # re-exported: callers import it here
from imagekit.oci.descriptor import check_digest, layer_annotations, manifest_descriptors
from imagekit.oci.index import IndexFile
from imagekit.oci.media import (
    ARTIFACT_TYPE,
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    REF_ANNOTATION,
)

LAYOUT_VERSION = "1.0.0"


class Layout:
    """The OCI image layout at ``root``: blobs, manifests, refs, temps and locks.

    Creating one creates the layout if it is missing. It knows nothing of recipes or pulls: the
    stages above write through it, and :class:`imagekit.Store` adds the workflows.
    """

    def __init__(self, root: Path, *, group: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.access = Access.of(group)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.cache_dir = self.root / "cache"
        self.locks_dir = self.root / "locks"
        self._layout = self.root / "oci-layout"
        self._index = IndexFile(
            self.root / "index.json", self.locks_dir / "index.lock", self._replace_file
        )
        try:
            if self._layout.exists():
                self.check_layout()
            else:  # a new store: its root becomes the gate (see oci.access)
                self.root.parent.mkdir(parents=True, exist_ok=True)
                self.access.make_dir(self.root, claim_empty=True)
            for d in (
                self.blobs_dir.parent,
                self.blobs_dir,
                self.tmp_dir,
                self.cache_dir,
                self.locks_dir,
            ):
                self.access.make_dir(d)
            self._create_file(self._layout, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
            self._create_file(self._index.path, index.empty())
        except OSError as e:
            raise StoreError(
                f"cannot create the store at {self.root}: {e}; "
                "set IMAGEKIT_HOME to a directory you can write"
            ) from e

    # --- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / hexpart(check_digest(digest))

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def new_temp(self, suffix: str = "") -> Path:
        """A fresh path in tmp/ (not created); its pid lets gc tell abandoned temps from live."""
        return self.tmp_dir / f"new-{os.getpid()}-{secrets.token_hex(8)}{suffix}"

    def commit_file(
        self,
        path: Path,
        digest: str,
        media_type: str,
        *,
        annotations: Mapping[str, str] | None = None,
        verify: bool = False,
    ) -> Descriptor:
        """Move a finished temp file into blobs/; the first writer of a digest wins.

        With ``verify=False`` the caller vouches for ``digest`` (it hashed while writing).
        A blob already there is kept only if it still has the temp's size and hashes to its
        name (the caller just wrote as many bytes, so rehashing them costs no more); a damaged
        one is replaced by the temp's good bytes, never reused.
        """
        dest = self.blob_path(digest)
        if not path.resolve().is_relative_to(self.tmp_dir.resolve()):
            raise StoreError(
                f"refusing to commit {path}: only files under {self.tmp_dir} can be moved into "
                "the store; write the data to a Store.new_temp() path first"
            )
        try:
            if _intact(dest, digest, path.stat().st_size):
                path.unlink()
            else:
                _seal(path, digest if verify else None, self.access)
                os.rename(path, dest)
                atomic.fsync_dir(self.blobs_dir)
            size = dest.stat().st_size
        except OSError as e:
            raise StoreError(f"cannot store {path} as {digest}: {e}") from e
        return Descriptor(
            media_type, digest, size, layer_annotations(media_type, digest, annotations)
        )

    def stored(self, digest: str, media_type: str) -> Descriptor:
        """The descriptor of a blob already in ``blobs/``, as :meth:`commit_file` returns it."""
        size = self.blob_path(digest).stat().st_size
        return Descriptor(media_type, digest, size, layer_annotations(media_type, digest))

    def add_bytes(
        self, data: bytes, media_type: str, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        digest = sha256_bytes(data)
        temp = self.new_temp()
        try:
            try:
                atomic.write_new(temp, data)
            except OSError as e:
                raise write_error(e, temp) from e
            return self.commit_file(temp, digest, media_type, annotations=annotations)
        finally:
            temp.unlink(missing_ok=True)

    def add_json(self, obj: Any, media_type: str) -> Descriptor:
        return self.add_bytes(canonical_json(obj), media_type)

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a (small) blob, checked against its digest on the way out."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"blob {digest} is missing from the store at {self.root}; "
                "pull the image that needs it again, and run `imagekit fsck`"
            ) from None
        if sha256_bytes(data) != digest:
            raise StoreError(f"blob {digest} is corrupt ({path}); run `imagekit fsck`")
        return data

    def read_json(self, digest: str) -> Any:
        try:
            return json.loads(self.read_blob(digest))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"blob {digest} is not valid JSON ({e}); run `imagekit fsck`") from e

    # --- manifests -------------------------------------------------------------------------

    def write_manifest(
        self,
        config: Mapping[str, Any],
        layers: Sequence[Descriptor],
        annotations: Mapping[str, str] | None = None,
        *,
        subject: Descriptor | None = None,
    ) -> Descriptor:
        """Store config and manifest; every layer must already be in the store.

        ``subject`` names the manifest this one was built from (OCI 1.1): it keeps the base's
        provenance alive for gc and lets registries list builds as referrers of their base.
        """
        for layer in [*layers, *([subject] if subject else [])]:
            if not self.has_blob(layer.digest):
                raise StoreError(
                    f"cannot write a manifest: layer {layer.digest} ({layer.media_type}) "
                    "is not in the store; commit it first"
                )
        config_desc = self.add_json(dict(config), MEDIA_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config_desc.to_json(),
            "layers": [layer.to_json() for layer in layers],
            "annotations": dict(annotations or {}),
        }
        if subject is not None:
            manifest["subject"] = subject.to_json()
        return self.add_json(manifest, MEDIA_MANIFEST)

    def manifest(self, digest: str) -> dict[str, Any]:
        """The parsed manifest, with its config and layer descriptors validated."""
        obj = self.read_json(digest)
        try:
            if isinstance(obj, dict) and obj.get("mediaType") == MEDIA_INDEX:
                raise StoreError("it is an image index, not an image manifest")
            manifest_descriptors(obj)
        except StoreError as e:
            raise StoreError(f"manifest {digest} is malformed: {e}; run `imagekit fsck`") from e
        return cast(dict[str, Any], obj)

    # --- refs ------------------------------------------------------------------------------

    def tag(self, ref: str, manifest: Descriptor) -> None:
        """Point ``ref`` at ``manifest``, replacing what it pointed at before."""
        name = str(parse_ref(ref))
        if not self.has_blob(manifest.digest):
            raise StoreError(f"cannot tag {name}: manifest {manifest.digest} is not in the store")
        entry = Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            {**manifest.annotations, REF_ANNOTATION: name},
        )
        self._index.edit({name}, entry)

    def untag(self, ref: str) -> Descriptor:
        """Remove ``ref`` (a bare name means ``name:latest``); the blobs stay until gc."""
        name = str(parse_ref(ref))
        gone = self._index.edit({name})
        if not gone:
            raise lookup.not_found(self, name)
        return gone[-1]

    def untag_all(self, refs: Iterable[str]) -> None:
        """Remove every ref in ``refs`` that is tagged, in one write of the index."""
        self._index.edit({str(parse_ref(ref)) for ref in refs})

    def refs(self) -> list[tuple[str, Descriptor]]:
        """Every tagged ref and its manifest descriptor, sorted by ref."""
        found: dict[str, Descriptor] = {}
        for entry in self.entries():
            ref = entry.annotations.get(REF_ANNOTATION)
            if ref is not None:
                found[ref] = entry
        return sorted(found.items())

    def find_ref(self, ref: str) -> Descriptor | None:
        """The manifest descriptor ``ref`` (``name:tag``, as tagged) names, or None; at 10,000
        refs this reads the index's lines without parsing them all."""
        return self._index.find(ref)

    def ref_names(self) -> list[str]:
        """Every tagged ref, sorted (cheaper than :meth:`refs` in a large store)."""
        return self._index.names()

    def resolve(self, ref_or_digest: str) -> Descriptor:
        """Find a manifest by ``name:tag``, ``name``, digest, or a digest prefix of 12+ hex."""
        return lookup.resolve(self, ref_or_digest)

    # --- secrets ---------------------------------------------------------------------------

    @property
    def digest_key_path(self) -> Path:
        return self.root / "digest.key"

    def digest_key(self) -> bytes:
        """This store's key for keyed digests of secrets (``core.digest.keyed_digest``).

        Made on first use, 0600 even in a group store, never recorded nor pushed. Build keys
        of steps and kickstarts with secrets depend on it: a new key rebuilds them once.
        """
        path = self.digest_key_path
        try:
            if not path.exists():
                atomic.create_file(path, secrets.token_bytes(32), temp=self.new_temp(), mode=0o600)
            key = path.read_bytes()
        except OSError as e:
            raise write_error(e, path) from e
        if len(key) != 32:
            raise StoreError(
                f"the store's digest key {path} is damaged ({len(key)} bytes, not 32): delete "
                "it; steps and kickstarts with secrets are then built again once"
            )
        return key

    # --- locks -----------------------------------------------------------------------------

    def shared_lock(self, *, timeout: float | None = None) -> FileLock:
        """Held by pulls and builds for their whole run, so gc waits for them."""
        return FileLock(self.root / ".lock", shared=True, timeout=timeout)

    def exclusive_lock(self, *, timeout: float | None = None) -> FileLock:
        """Held by gc: no pull or build is between adding blobs and tagging them."""
        return FileLock(self.root / ".lock", shared=False, timeout=timeout)

    def digest_lock(self, key: str, *, timeout: float | None = None) -> FileLock:
        """An exclusive lock per key (e.g. one download per expected digest)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "-", key)
        if not safe or safe.startswith(".") or len(safe) > 128:
            safe = "key-" + hexpart(sha256_bytes(key.encode()))
        return FileLock(self.locks_dir / f"{safe}.lock", timeout=timeout)

    # --- internals -------------------------------------------------------------------------

    def check_layout(self) -> None:
        try:
            obj = json.loads(self._layout.read_bytes())
        except (OSError, ValueError) as e:
            raise StoreError(
                f"{self._layout} is unreadable ({e}); if {self.root} is an imagekit store, "
                'restore the file as {"imageLayoutVersion": "1.0.0"}'
            ) from e
        version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
        if version != LAYOUT_VERSION:
            raise StoreError(
                f"{self.root} holds an OCI layout of version {version!r}, not {LAYOUT_VERSION!r}; "
                "point IMAGEKIT_HOME at another directory"
            )

    def entries(self, data: bytes | None = None) -> list[Descriptor]:
        """Every index entry in the order tagged (a retag moves a ref to the end); of ``data``,
        bytes :meth:`index_bytes` returned, if given."""
        return self._index.entries(data)

    def index_bytes(self) -> bytes:
        """index.json's bytes now: what gc keys its live set by (oci.gc)."""
        return self._index.read()

    def _create_file(self, path: Path, data: bytes) -> None:
        """Create ``path`` with ``data`` unless it exists: link never clobbers a racing creator."""
        atomic.create_file(path, data, temp=self.new_temp(), mode=self.access.file_mode)

    def _replace_file(self, path: Path, data: bytes) -> None:
        try:
            atomic.replace_file(path, data, temp=self.new_temp(), mode=self.access.file_mode)
        except OSError as e:
            raise write_error(e, path) from e


def write_error(error: OSError, path: Path) -> StoreError:
    """A typed error for a failed write; the old state is untouched (temp file + rename)."""
    if atomic.disk_full(error):
        return StoreError(
            f"disk full while writing {path}: free space in {path.parent} (or run `imagekit gc "
            "--partial`) and run again; the store was not changed"
        )
    return StoreError(f"cannot write {path}: {error.strerror or error}")


def _intact(blob: Path, digest: str, size: int) -> bool:
    """Whether ``blob`` exists with ``size`` bytes that hash to ``digest``."""
    try:
        if blob.stat().st_size != size:
            return False
        with blob.open("rb") as f:
            return "sha256:" + hash_stream(f)["sha256"] == digest
    except FileNotFoundError:
        return False


def _seal(path: Path, expected: str | None, access: Access) -> None:
    """Make a temp file durable and read-only (the store's mode and group), checking its digest
    first if asked to."""
    with path.open("rb") as f:
        if expected is not None:
            actual = "sha256:" + hash_stream(f)["sha256"]
            if actual != expected:
                path.unlink()
                raise StoreError(
                    f"{path.name} hashes to {actual}, not the expected {expected}; the data is "
                    "corrupt or changed upstream, so it was deleted: fetch it again"
                )
        os.fsync(f.fileno())
        access.seal(f.fileno())
