"""The store's permission model: owner-only by default, an optional group of readers, imports
that never widen who can read a file, and fsck naming what others can read.

The suite runs as root, who can read anything: mode bits and owners are checked with os.stat,
and access itself by a reader process that setpriv runs as an unprivileged uid.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit import config
from imagekit.build.cache import BuildCache
from imagekit.errors import RecipeError, StoreError
from imagekit.oci.layout import Descriptor
from imagekit.store import Store, open_store
from tests.conftest import make_qcow2
from tests.reliability import figures

NOBODY = 65534


def need(tool: str) -> str:
    """The tool's path; without it the test is skipped, and fails under CI=1."""
    path = shutil.which(tool)
    if path is None or (tool.startswith("group") and os.geteuid() != 0):
        reason = f"{tool} is not available (or needs root) on this machine"
        if os.environ.get("CI") == "1":
            pytest.fail(reason + "; CI must run this test")
        pytest.skip(reason)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def reader_group() -> Iterator[str]:
    """A group made for this test (groupadd) and removed after it."""
    groupadd, groupdel = need("groupadd"), need("groupdel")
    name = f"imagekit-t{os.getpid()}"
    subprocess.run([groupadd, name], check=True)
    try:
        yield name
    finally:
        subprocess.run([groupdel, name], check=True)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory other users can pass through (pytest's tmp_path is 0700 and would hide
    the store from the unprivileged reader whatever its modes)."""
    directory = Path(tempfile.mkdtemp(prefix="imagekit-perm-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def fill(store: Store) -> Descriptor:
    """A blob, a tagged manifest, a build-cache entry and the digest key: one of each kind."""
    blob = store.add_bytes(b"a layer with password hashes", "application/octet-stream")
    manifest = store.write_manifest({"created": "now"}, [blob])
    store.tag("x:1", manifest)
    BuildCache(store).put("sha256:" + "1" * 64, manifest)
    store.digest_key()
    return blob


def as_nobody(path: Path, *groups: int) -> subprocess.CompletedProcess[bytes]:
    """``cat path`` as uid/gid nobody with exactly ``groups`` as supplementary groups."""
    setpriv = need("setpriv")
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    command = [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), *group_args]
    return subprocess.run([*command, "cat", str(path)], capture_output=True, check=False)


def test_a_new_store_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # what imagekit makes must not depend on the caller's umask
    try:
        store = Store(tmp_path / "store")
        blob = fill(store)
    finally:
        os.umask(old)
    root = store.root
    for directory in (root, root / "blobs", store.blobs_dir, store.tmp_dir, store.locks_dir):
        assert mode(directory) == 0o700, directory
    assert mode(store.cache_dir) == 0o700 and mode(store.cache_dir / "build") == 0o700
    for path in (root / "oci-layout", root / "index.json", root / "digest.key"):
        assert mode(path) == 0o600, path
    assert all(mode(p) == 0o600 for p in (store.cache_dir / "build").iterdir())
    assert all(mode(p) == 0o400 for p in store.blobs_dir.iterdir())
    assert mode(store.blob_path(blob.digest)) == 0o400
    assert store.fsck().ok
    # Everything is owner-only but flock's lock files, which hold no byte (core.locking).
    checked = [root, *root.rglob("*")]
    wider = [p for p in checked if mode(p) & 0o077]
    assert all(p.name.endswith(".lock") and p.stat().st_size == 0 for p in wider), wider
    figures.add("permissions: entries of a new store checked for mode (umask 0)", len(checked))


def test_others_cannot_read_an_owner_only_store(shared: Path) -> None:
    store = Store(shared / "store")
    blob = fill(store)
    denied = as_nobody(store.blob_path(blob.digest))
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert as_nobody(store.root / "index.json").returncode != 0


def test_import_never_widens_who_can_read_the_file(tmp_path: Path) -> None:
    source = tmp_path / "private.qcow2"
    make_qcow2(source, seed=40)
    source.chmod(0o640)
    store = Store(tmp_path / "store")
    image = store.import_file(source, "mine:1")
    assert mode(image.path) == 0o400  # before: 0444, readable by every local user


def test_a_group_store_is_readable_by_its_group_only(reader_group: str, shared: Path) -> None:
    gid = grp.getgrnam(reader_group).gr_gid
    store = Store(shared / "store", group=reader_group)
    blob = fill(store)
    root = store.root
    for directory in (root, store.blobs_dir, store.tmp_dir, store.cache_dir / "build"):
        st = os.stat(directory)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, gid), directory
    for path in (root / "index.json", *(store.cache_dir / "build").iterdir()):
        assert (mode(path), os.stat(path).st_gid) == (0o640, gid), path
    assert (mode(store.blob_path(blob.digest)), os.stat(store.blob_path(blob.digest)).st_gid) == (
        0o440,
        gid,
    )
    assert mode(root / "digest.key") == 0o600  # readers need no key
    assert store.fsck().ok

    member = as_nobody(store.blob_path(blob.digest), gid)
    assert member.returncode == 0, member.stderr
    assert member.stdout == b"a layer with password hashes"
    assert as_nobody(store.blob_path(blob.digest)).returncode != 0  # not a member
    assert as_nobody(root / "digest.key", gid).returncode != 0


def test_an_import_into_a_group_store_keeps_the_group_only_if_the_file_had_it(
    reader_group: str, tmp_path: Path
) -> None:
    gid = grp.getgrnam(reader_group).gr_gid
    store = Store(tmp_path / "store", group=reader_group)
    cases = [(0o640, 0, 0o400), (0o644, 0, 0o440), (0o640, gid, 0o440), (0o600, gid, 0o400)]
    for seed, (file_mode, file_gid, blob_mode) in enumerate(cases, 50):
        source = tmp_path / f"disk{seed}.qcow2"
        make_qcow2(source, seed=seed)
        os.chown(source, -1, file_gid)
        source.chmod(file_mode)
        image = store.import_file(source, f"disk:{seed}")
        assert mode(image.path) == blob_mode, (oct(file_mode), file_gid)
    figures.add(
        "permissions: imports into a group store that kept the file's read rights", len(cases)
    )


def test_opening_a_store_never_changes_its_modes_and_fsck_says_what_to_run(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    blob = fill(store)
    path = store.blob_path(blob.digest)
    # What an older imagekit made: 0755 folders, 0444 blobs.
    for directory in (store.root, store.root / "blobs", store.blobs_dir):
        directory.chmod(0o755)
    path.chmod(0o444)

    reopened = Store(store.root)

    assert mode(reopened.root) == 0o755 and mode(path) == 0o444  # not changed behind our back
    problems = reopened.fsck().problems
    assert any(
        "can be read by other users" in p
        and str(path) in p
        and f"chmod -R go-rwx {store.root}" in p
        for p in problems
    ), problems
    subprocess.run(["chmod", "-R", "go-rwx", str(store.root)], check=True)
    assert reopened.fsck().ok
    assert mode(path) == 0o400


def test_fsck_of_a_group_store_minds_only_other_users(reader_group: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store", group=reader_group)
    fill(store)
    assert store.fsck().ok
    store.root.chmod(0o2755)
    (store.root / "index.json").chmod(0o644)
    problems = store.fsck().problems
    assert any(f"chmod -R o-rwx {store.root}" in p and "index.json" in p for p in problems)


def test_fsck_says_how_to_give_an_owner_only_store_to_a_group(
    reader_group: str, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    blob = fill(store)
    grouped = Store(store.root, group=reader_group)
    problems = grouped.fsck().problems
    assert len(problems) == 1 and f"group {reader_group} cannot enter the store" in problems[0]
    for _ in range(2):  # the group's chmod also opens the digest key: fsck says so next
        for problem in problems:
            subprocess.run(problem.split("run `")[1].rstrip("`"), shell=True, check=True)
        problems = grouped.fsck().problems
    assert problems == []
    assert mode(store.root / "digest.key") == 0o600
    assert mode(store.root) == 0o2750 and mode(store.blob_path(blob.digest)) == 0o440


def test_the_group_must_exist_and_open_store_applies_it(
    reader_group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "xdg"
    (home / "imagekit").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv(config.HOME_ENV, raising=False)
    settings = home / "imagekit" / "config.toml"
    settings.write_text('group = "no-such-group-imagekit"\n')
    with pytest.raises(RecipeError, match="group 'no-such-group-imagekit' does not exist"):
        config.load_settings()
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "other", group="no-such-group-imagekit")

    settings.write_text(f'group = "{reader_group}"\n')
    store = open_store(tmp_path / "store")
    assert os.stat(store.root).st_gid == grp.getgrnam(reader_group).gr_gid
    assert store.access.group == reader_group
