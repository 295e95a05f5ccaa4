"""fsck: every blob rehashed, every ref's manifest, config and layers present, permissions right."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from imagekit.core.digest import hash_stream
from imagekit.core.refs import BLOB_NAME
from imagekit.errors import StoreError
from imagekit.oci.descriptor import manifest_descriptors, parents
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import REF_ANNOTATION


@dataclass(frozen=True)
class FsckReport:
    """Every problem fsck found, each phrased as what is wrong and what to do."""

    problems: list[str]
    blobs_checked: int
    bytes_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(layout: Layout) -> FsckReport:
    """Rehash every blob, check every ref's manifest, config and layers are present, and that
    nobody the store's permission model leaves out can read it (oci.access)."""
    problems: list[str] = []
    with layout.shared_lock():
        try:
            layout.check_layout()
        except StoreError as e:
            problems.append(str(e))
        count, nbytes = _check_blobs(layout, problems)
        problems.extend(layout.access.problems(layout.root))
        _check_digest_key(layout, problems)
        try:
            entries = layout.entries()
        except StoreError as e:
            problems.append(str(e))
            entries = []
        for entry in entries:
            _check_image(layout, entry, problems)
    return FsckReport(problems, count, nbytes)


def _check_blobs(layout: Layout, problems: list[str]) -> tuple[int, int]:
    count = nbytes = 0
    if not layout.blobs_dir.is_dir():
        problems.append(f"{layout.blobs_dir} is missing; every image must be pulled again")
        return count, nbytes
    for path in sorted(layout.blobs_dir.iterdir()):
        st = path.lstat()
        if not BLOB_NAME.fullmatch(path.name) or not stat.S_ISREG(st.st_mode):
            problems.append(
                f"{path} is not a blob (its name is not a sha256 or it is not a regular "
                "file); move it out of the store"
            )
            continue
        if st.st_mode & 0o222:
            problems.append(
                f"blob sha256:{path.name} is writable (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod {layout.access.blob_mode:04o} {path}`"
            )
        try:
            with path.open("rb") as f:
                actual = "sha256:" + hash_stream(f)["sha256"]
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


def _check_digest_key(layout: Layout, problems: list[str]) -> None:
    """The key secrets enter build keys with is the owner's alone, group store or not."""
    path = layout.digest_key_path
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        problems.append(
            f"the store's digest key {path} can be read by others (mode {mode:o}), who could "
            f"then try guesses at the secrets in build keys: run `chmod 0600 {path}`"
        )


def _check_image(layout: Layout, entry: Descriptor, problems: list[str]) -> None:
    ref = entry.annotations.get(REF_ANNOTATION, entry.digest)
    if not layout.has_blob(entry.digest):
        problems.append(
            f"{ref}: manifest {entry.digest} is missing; pull the image again or untag it"
        )
        return
    try:
        descriptors = manifest_descriptors(layout.manifest(entry.digest))
        wanted: list[tuple[str, str, int | None]] = [
            (d.media_type, d.digest, d.size) for d in descriptors
        ]
        wanted += [("parent disk", p, None) for p in parents(descriptors)]
    except StoreError as e:
        problems.append(f"{ref}: {e}")
        return
    for kind, digest, size in wanted:
        path = layout.blob_path(digest)
        if not path.is_file():
            problems.append(f"{ref}: {kind} blob {digest} is missing; pull the image again")
        elif size is not None and path.stat().st_size != size:
            problems.append(
                f"{ref}: blob {digest} has {path.stat().st_size} bytes but the manifest "
                f"says {size}; pull the image again"
            )
