"""The local content-addressed store: an OCI image layout that skopeo, oras and registries read.

Blobs are named by the sha256 of their bytes and never change; refs live in ``index.json``.
Every write goes to ``tmp/`` first, is fsynced, then renamed into place, so a kill -9 at any
instant leaves either the old or the new state. ``.lock`` is held shared by anything that adds
to the store and exclusively by gc, so gc never sweeps a blob whose manifest is still being made.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from imagekit.errors import RecipeError, RefNotFoundError, StoreError
from imagekit.locking import FileLock
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.refs import DIGEST_RE, parse_ref

if TYPE_CHECKING:
    from imagekit.build import BuildResult
    from imagekit.image import Image
    from imagekit.recipe import Recipe

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.imagekit.image.v1"
MEDIA_CONFIG = "application/vnd.imagekit.config.v1+json"
MEDIA_DISK_QCOW2 = "application/vnd.imagekit.disk.qcow2"
MEDIA_DISK_RAW = "application/vnd.imagekit.disk.raw"
MEDIA_EVIDENCE_CHECKSUM = "application/vnd.imagekit.evidence.checksum"
MEDIA_EVIDENCE_SIGNATURE = "application/vnd.imagekit.evidence.signature"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
PARENT_ANNOTATION = "org.imagekit.parent"

LAYOUT_VERSION = "1.0.0"
CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{12,64}")
_TEMP_RE = re.compile(r"new-(\d+)-.*", re.DOTALL)
_MANIFEST_MAX = 4 << 20  # a JSON blob bigger than this is not a manifest worth parsing in gc


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor: what a blob is, its digest and size, plus annotations."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A private copy, so a caller mutating its dict cannot change a stored descriptor.
        object.__setattr__(self, "annotations", dict(self.annotations))

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        """Parse an OCI descriptor; StoreError if any field has the wrong type or form."""
        if not isinstance(obj, dict):
            raise StoreError(f"malformed descriptor {obj!r}: expected a JSON object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        annotations = obj.get("annotations", {})
        if not isinstance(media_type, str) or not media_type:
            raise StoreError(f"malformed descriptor {obj!r}: mediaType must be a string")
        if not isinstance(digest, str) or not re.fullmatch(DIGEST_RE, digest):
            raise StoreError(f"malformed descriptor {obj!r}: digest must be sha256:<64 hex>")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"malformed descriptor {obj!r}: size must be a non-negative integer")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise StoreError(f"malformed descriptor {obj!r}: annotations must map str to str")
        return cls(media_type, digest, size, annotations)


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or would remove, on a dry run); ``freed_bytes`` counts blobs and temps."""

    removed_blobs: list[str]
    freed_bytes: int
    removed_temp: list[str]


@dataclass(frozen=True)
class FsckReport:
    """Every problem fsck found, each phrased as what is wrong and what to do."""

    problems: list[str]
    blobs_checked: int
    bytes_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


def canonical_json(obj: Any) -> bytes:
    """One byte form per JSON value, so equal configs and manifests get equal digests."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


class Store:
    """A store rooted at ``root``; creating one creates the layout if it is missing."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.cache_dir = self.root / "cache"
        self.locks_dir = self.root / "locks"
        self._layout = self.root / "oci-layout"
        self._index = self.root / "index.json"
        try:
            if self._layout.exists():
                self._check_layout()
            for d in (self.blobs_dir, self.tmp_dir, self.cache_dir, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._create_file(self._layout, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
            self._create_file(self._index, _index_bytes(_empty_index()))
        except OSError as e:
            raise StoreError(
                f"cannot create the store at {self.root}: {e}; "
                "set IMAGEKIT_HOME to a directory you can write"
            ) from e

    @classmethod
    def default(cls) -> Store:
        """$IMAGEKIT_HOME, else /var/lib/imagekit for root, else $XDG_DATA_HOME/imagekit."""
        home = os.environ.get("IMAGEKIT_HOME")
        if home:
            return cls(Path(home).expanduser())
        if os.geteuid() == 0:
            return cls(Path("/var/lib/imagekit"))
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
        return cls(base / "imagekit")

    # --- the public workflow (implemented in their stage modules) ---------------------------

    def pull(
        self,
        recipe: Recipe | str,
        *,
        mirror: str | None = None,
        tag: str | None = None,
        refresh: bool = False,
        offline: bool = False,
        allow_loopback_http: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Image:
        """Fetch, verify and store a recipe's image (a Recipe, a recipe file or NAME[:VERSION]).

        ``offline`` makes no request (cached metadata, stored images only); see pull.pull.
        """
        from imagekit.pull import pull
        from imagekit.recipe import load_recipe

        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        return pull(
            self,
            loaded,
            mirror=mirror,
            tag=tag,
            refresh=refresh,
            offline=offline,
            allow_loopback_http=allow_loopback_http,
            progress=progress or ignore_progress,
        )

    def build(
        self,
        recipe: Recipe | str,
        *,
        tag: str | None = None,
        mirror: str | None = None,
        use_cache: bool = True,
        progress: ProgressCallback | None = None,
    ) -> BuildResult:
        """Build a recipe: its base, then one cached qcow2 layer per customize step."""
        from imagekit.build import build
        from imagekit.recipe import load_recipe

        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        return build(
            self,
            loaded,
            tag=tag,
            mirror=mirror,
            use_cache=use_cache,
            progress=progress or ignore_progress,
        )

    def import_file(
        self,
        path: Path,
        ref: str,
        *,
        disk_format: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Image:
        """Store a local disk image of the user's own, recorded as unverified."""
        from imagekit.pull import import_file

        return import_file(
            self, Path(path), ref, disk_format=disk_format, progress=progress or ignore_progress
        )

    def image(self, ref_or_digest: str) -> Image:
        """The stored image a ref or manifest digest names."""
        from imagekit.image import Image

        return Image.load(self, ref_or_digest)

    def images(self) -> list[Image]:
        """Every tagged image, sorted by ref."""
        from imagekit.image import Image

        return [Image.from_descriptor(self, descriptor) for _, descriptor in self.refs()]

    def remove(self, ref: str) -> Descriptor:
        """Untag ``ref``; its blobs are freed by the next gc unless another ref uses them."""
        return self.untag(ref)

    # --- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / _check_digest(digest).removeprefix("sha256:")

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
        """
        dest = self.blob_path(digest)
        if not path.resolve().is_relative_to(self.tmp_dir.resolve()):
            raise StoreError(
                f"refusing to commit {path}: only files under {self.tmp_dir} can be moved into "
                "the store; write the data to a Store.new_temp() path first"
            )
        try:
            if dest.exists():
                path.unlink()
            else:
                _seal(path, digest if verify else None)
                os.rename(path, dest)
                _fsync_dir(self.blobs_dir)
            size = dest.stat().st_size
        except OSError as e:
            raise StoreError(f"cannot store {path} as {digest}: {e}") from e
        return Descriptor(media_type, digest, size, annotations or {})

    def add_bytes(
        self, data: bytes, media_type: str, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        temp = self.new_temp()
        try:
            try:
                temp.write_bytes(data)
            except OSError as e:
                raise _write_error(e, temp) from e
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
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
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
            _manifest_descriptors(obj)
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
        with self._index_lock():
            index = self._load_index()
            kept = [m for m in index["manifests"] if _ref_of(m) != name]
            index["manifests"] = [*kept, entry.to_json()]
            self._replace_file(self._index, _index_bytes(index))

    def untag(self, ref: str) -> Descriptor:
        """Remove ``ref`` (a bare name means ``name:latest``); the blobs stay until gc."""
        name = str(parse_ref(ref))
        with self._index_lock():
            index = self._load_index()
            gone = [m for m in index["manifests"] if _ref_of(m) == name]
            if not gone:
                raise self._not_found(name)
            index["manifests"] = [m for m in index["manifests"] if _ref_of(m) != name]
            self._replace_file(self._index, _index_bytes(index))
        return Descriptor.from_json(gone[-1])

    def refs(self) -> list[tuple[str, Descriptor]]:
        """Every tagged ref and its manifest descriptor, sorted by ref."""
        found: dict[str, Descriptor] = {}
        for obj in self._load_index()["manifests"]:
            ref = _ref_of(obj)
            if ref is not None:
                found[ref] = Descriptor.from_json(obj)
        return sorted(found.items())

    def resolve(self, ref_or_digest: str) -> Descriptor:
        """Find a manifest by ``name:tag``, ``name``, digest, or a digest prefix of 12+ hex."""
        text = ref_or_digest
        if text.startswith("sha256:"):
            hexpart = text.removeprefix("sha256:")
            if not _HEX_PREFIX.fullmatch(hexpart):
                raise RecipeError(
                    f"invalid digest {text!r}: expected 'sha256:' followed by 12 to 64 "
                    "lowercase hex digits"
                )
            return self._resolve_digest(hexpart)
        ref = parse_ref(text)
        refs = dict(self.refs())
        if ":" in text:
            if str(ref) in refs:
                return refs[str(ref)]
            raise self._not_found(str(ref))
        same_name = [r for r in refs if r.partition(":")[0] == ref.name]
        if len(same_name) == 1:
            return refs[same_name[0]]
        if str(ref) in refs:
            return refs[str(ref)]
        if same_name:
            raise RefNotFoundError(
                f"{text!r} is ambiguous: it has tags {', '.join(same_name)} and none is "
                f"'latest'; name one, e.g. {same_name[0]!r}"
            )
        if _HEX_PREFIX.fullmatch(text):
            return self._resolve_digest(text)
        raise self._not_found(text)

    # --- gc and fsck -----------------------------------------------------------------------

    def gc(
        self,
        *,
        extra_roots: Iterable[str] = (),
        remove_partial: bool = False,
        dry_run: bool = False,
    ) -> GcReport:
        """Remove blobs no ref (or extra root) reaches, and temps of processes that died.

        Partial downloads (``tmp/*.part``, ``*.part.json``) are kept for resuming unless
        ``remove_partial``. Waits for every shared-lock holder (pulls, builds) to finish.
        """
        with self.exclusive_lock():
            roots = [d.digest for d in self._entries()]
            roots += [_check_digest(r) for r in extra_roots]
            marked = self._mark(roots)
            removed, freed = [], 0
            for path in sorted(self.blobs_dir.iterdir()):
                if not _HEX64.fullmatch(path.name) or not path.is_file():
                    continue  # not a blob name: fsck reports it, gc leaves it alone
                if "sha256:" + path.name in marked:
                    continue
                removed.append("sha256:" + path.name)
                freed += path.stat().st_size
                if not dry_run:
                    path.unlink()
            if removed and not dry_run:
                _fsync_dir(self.blobs_dir)
            removed_temp, temp_bytes = self._sweep_tmp(remove_partial, dry_run)
        return GcReport(removed, freed + temp_bytes, removed_temp)

    def fsck(self) -> FsckReport:
        """Rehash every blob and check every ref's manifest, config and layers are present."""
        problems: list[str] = []
        with self.shared_lock():
            try:
                self._check_layout()
            except StoreError as e:
                problems.append(str(e))
            count, nbytes = self._check_blobs(problems)
            try:
                entries = self._entries()
            except StoreError as e:
                problems.append(str(e))
                entries = []
            for entry in entries:
                self._check_image(entry, problems)
        return FsckReport(problems, count, nbytes)

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
            safe = "key-" + hashlib.sha256(key.encode()).hexdigest()
        return FileLock(self.locks_dir / f"{safe}.lock", timeout=timeout)

    # --- internals -------------------------------------------------------------------------

    def _index_lock(self) -> FileLock:
        return FileLock(self.locks_dir / "index.lock")

    def _check_layout(self) -> None:
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

    def _load_index(self) -> dict[str, Any]:
        """index.json, validated; StoreError sends the user to fsck when it is damaged."""
        try:
            obj = json.loads(self._index.read_bytes())
            if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
                raise StoreError("not an OCI index with schemaVersion 2")
            if not isinstance(obj.get("manifests"), list):
                raise StoreError("'manifests' is not a list")
            for entry in obj["manifests"]:
                Descriptor.from_json(entry)
        except (OSError, ValueError, StoreError) as e:
            raise StoreError(
                f"{self._index} is damaged ({e}); run `imagekit fsck`, then restore it "
                "from a backup or re-tag your images"
            ) from e
        return obj

    def _entries(self) -> list[Descriptor]:
        return [Descriptor.from_json(m) for m in self._load_index()["manifests"]]

    def _resolve_digest(self, hexpart: str) -> Descriptor:
        entries = sorted(self._entries(), key=lambda d: d.annotations.get(REF_ANNOTATION, ""))
        digests = sorted({d.digest for d in entries if d.digest[7:].startswith(hexpart)})
        if len(digests) == 1:
            return next(d for d in entries if d.digest == digests[0])
        if digests:
            raise RefNotFoundError(
                f"digest prefix {hexpart!r} matches {len(digests)} images "
                f"({', '.join(d[:19] for d in digests)}); type more of the digest"
            )
        digest = "sha256:" + hexpart
        if len(hexpart) == 64 and self.has_blob(digest):
            self.manifest(digest)  # untagged but present, e.g. kept by the build cache
            return Descriptor(MEDIA_MANIFEST, digest, self.blob_path(digest).stat().st_size)
        raise RefNotFoundError(
            f"no image with digest {'sha256:' + hexpart!r} in {self.root}; "
            "check the digest, or pull the image first"
        )

    def _not_found(self, wanted: str) -> RefNotFoundError:
        refs = [r for r, _ in self.refs()]
        if not refs:
            return RefNotFoundError(
                f"no image {wanted!r}: the store at {self.root} is empty; pull one first"
            )
        name = wanted.partition(":")[0]
        close = [r for r in refs if name in r] + difflib.get_close_matches(wanted, refs, 5, 0.5)
        shown = list(dict.fromkeys(close))[:10]
        if shown:
            return RefNotFoundError(f"no image {wanted!r}; close matches: {', '.join(shown)}")
        more = f" and {len(refs) - 10} more" if len(refs) > 10 else ""
        return RefNotFoundError(f"no image {wanted!r}; the store has: {', '.join(refs[:10])}{more}")

    def _mark(self, roots: Iterable[str]) -> set[str]:
        """Every digest reachable from ``roots`` through manifests and disk parent chains."""
        marked: set[str] = set()
        work = list(roots)
        while work:
            digest = work.pop()
            if digest not in marked:
                marked.add(digest)
                work.extend(self._children(digest))
        return marked

    def _children(self, digest: str) -> list[str]:
        """What a blob keeps alive: a manifest's descriptors and parents, a qcow2's backing."""
        path = self.blob_path(digest)
        try:
            with path.open("rb") as f:
                head = f.read(1)
                f.seek(0)
                if head == b"Q":
                    return _qcow2_backing(f)
                if head != b"{" or os.fstat(f.fileno()).st_size > _MANIFEST_MAX:
                    return []
                obj = json.loads(f.read())
        except FileNotFoundError:
            return []
        except ValueError:
            return []  # JSON-looking but not JSON: a config or evidence blob, not a manifest
        if not isinstance(obj, dict) or not _is_manifest_like(obj):
            return []
        try:
            descriptors = _manifest_descriptors(obj)
            return [d.digest for d in descriptors] + _parents(descriptors)
        except StoreError as e:
            raise StoreError(
                f"gc stopped, nothing removed: manifest {digest} is malformed ({e}); "
                "run `imagekit fsck`"
            ) from e

    def _sweep_tmp(self, remove_partial: bool, dry_run: bool) -> tuple[list[str], int]:
        removed, freed = [], 0
        for path in sorted(self.tmp_dir.iterdir()):
            # A process's own temps (new-<pid>-*, including a scratch disk still filling as
            # new-<pid>-*.qcow2.part) go when it is dead; resumable downloads (<hash>.part) are
            # not tied to a pid and go only with ``remove_partial``.
            m = _TEMP_RE.fullmatch(path.name)
            if m is not None:
                if _pid_alive(int(m[1])):
                    continue
            elif not (remove_partial and path.name.endswith((".part", ".part.json"))):
                continue
            removed.append(path.name)
            freed += _disk_usage(path)
            if not dry_run:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return removed, freed

    def _check_blobs(self, problems: list[str]) -> tuple[int, int]:
        count = nbytes = 0
        if not self.blobs_dir.is_dir():
            problems.append(f"{self.blobs_dir} is missing; every image must be pulled again")
            return count, nbytes
        for path in sorted(self.blobs_dir.iterdir()):
            st = path.lstat()
            if not _HEX64.fullmatch(path.name) or not stat.S_ISREG(st.st_mode):
                problems.append(
                    f"{path} is not a blob (its name is not a sha256 or it is not a regular "
                    "file); move it out of the store"
                )
                continue
            if st.st_mode & 0o222:
                problems.append(
                    f"blob sha256:{path.name} is writable (mode {stat.S_IMODE(st.st_mode):o}); "
                    f"run `chmod 0444 {path}`"
                )
            try:
                with path.open("rb") as f:
                    actual = _sha256_file(f)
            except OSError as e:
                problems.append(f"blob sha256:{path.name} cannot be read ({e})")
                continue
            count += 1
            nbytes += st.st_size
            if actual != "sha256:" + path.name:
                problems.append(
                    f"blob sha256:{path.name} is corrupt: its bytes hash to {actual}; delete "
                    f"{path} and pull the images that use it again"
                )
        return count, nbytes

    def _check_image(self, entry: Descriptor, problems: list[str]) -> None:
        ref = entry.annotations.get(REF_ANNOTATION, entry.digest)
        if not self.has_blob(entry.digest):
            problems.append(
                f"{ref}: manifest {entry.digest} is missing; pull the image again or untag it"
            )
            return
        try:
            descriptors = _manifest_descriptors(self.manifest(entry.digest))
            wanted: list[tuple[str, str, int | None]] = [
                (d.media_type, d.digest, d.size) for d in descriptors
            ]
            wanted += [("parent disk", p, None) for p in _parents(descriptors)]
        except StoreError as e:
            problems.append(f"{ref}: {e}")
            return
        for kind, digest, size in wanted:
            path = self.blob_path(digest)
            if not path.is_file():
                problems.append(f"{ref}: {kind} blob {digest} is missing; pull the image again")
            elif size is not None and path.stat().st_size != size:
                problems.append(
                    f"{ref}: blob {digest} has {path.stat().st_size} bytes but the manifest "
                    f"says {size}; pull the image again"
                )

    def _create_file(self, path: Path, data: bytes) -> None:
        """Create ``path`` with ``data`` unless it exists: link never clobbers a racing creator."""
        if path.exists():
            return
        temp = self.new_temp()
        try:
            _write_synced(temp, data)
            os.link(temp, path)
            _fsync_dir(path.parent)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)

    def _replace_file(self, path: Path, data: bytes) -> None:
        temp = self.new_temp()
        try:
            _write_synced(temp, data)
            os.replace(temp, path)
        except OSError as e:
            raise _write_error(e, path) from e
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(path.parent)


def _write_error(error: OSError, path: Path) -> StoreError:
    """A typed error for a failed write; the old state is untouched (temp file + rename)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full while writing {path}: free space in {path.parent} (or run `imagekit gc "
            "--partial`) and run again; the store was not changed"
        )
    return StoreError(f"cannot write {path}: {error.strerror or error}")


def _check_digest(digest: str) -> str:
    if not re.fullmatch(DIGEST_RE, digest):
        raise StoreError(f"malformed digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


def _empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}


def _index_bytes(index: Mapping[str, Any]) -> bytes:
    """index.json is edited by people and diffed, so it is indented, unlike blobs."""
    return (json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _ref_of(entry: Any) -> str | None:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    ref = annotations.get(REF_ANNOTATION) if isinstance(annotations, dict) else None
    return ref if isinstance(ref, str) else None


def _is_manifest_like(obj: dict[str, Any]) -> bool:
    if obj.get("mediaType") in (MEDIA_MANIFEST, MEDIA_INDEX):
        return True
    return obj.get("schemaVersion") == 2 and ("layers" in obj or "manifests" in obj)


def _manifest_descriptors(obj: Any) -> list[Descriptor]:
    """The descriptors a manifest (or nested index) references; StoreError if malformed."""
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        raise StoreError("not an OCI manifest with schemaVersion 2")
    if obj.get("mediaType") == MEDIA_INDEX:
        items = obj.get("manifests")
    else:
        if obj.get("mediaType", MEDIA_MANIFEST) != MEDIA_MANIFEST:
            raise StoreError(f"unexpected mediaType {obj.get('mediaType')!r}")
        items = obj.get("layers")
        if not isinstance(items, list):
            raise StoreError("'layers' is not a list")
        items = [obj.get("config"), *items, *([obj["subject"]] if "subject" in obj else [])]
    if not isinstance(items, list):
        raise StoreError("'manifests' is not a list")
    annotations = obj.get("annotations", {})
    if not isinstance(annotations, dict):
        raise StoreError("'annotations' is not an object")
    return [Descriptor.from_json(item) for item in items]


def _parents(descriptors: Iterable[Descriptor]) -> list[str]:
    """The parent digests named by overlay layers; StoreError if one is malformed."""
    return [
        _check_digest(d.annotations[PARENT_ANNOTATION])
        for d in descriptors
        if PARENT_ANNOTATION in d.annotations
    ]


def _qcow2_backing(f: IO[bytes]) -> list[str]:
    """The blob a qcow2 overlay in the store names as its backing file, which qemu will open.

    Followed by gc as well as the parent annotation, since deleting a live backing file
    destroys every overlay on it.
    """
    header = f.read(20)
    if len(header) < 20 or header[:4] != b"QFI\xfb":
        return []
    offset, size = struct.unpack(">QI", header[8:20])
    if not offset or not 0 < size <= 1023:
        return []
    f.seek(offset)
    name = os.path.basename(f.read(size).decode("utf-8", "replace"))
    return ["sha256:" + name] if _HEX64.fullmatch(name) else []


def _seal(path: Path, expected: str | None) -> None:
    """Make a temp file durable and read-only, checking its digest first if asked to."""
    with path.open("rb") as f:
        if expected is not None:
            actual = _sha256_file(f)
            if actual != expected:
                path.unlink()
                raise StoreError(
                    f"{path.name} hashes to {actual}, not the expected {expected}; the data is "
                    "corrupt or changed upstream, so it was deleted: fetch it again"
                )
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), 0o444)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _disk_usage(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
    return path.lstat().st_size
