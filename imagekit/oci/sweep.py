"""gc's sweep: unmarked blobs, the temps of processes that died, lock files nobody holds.

Only under the store's exclusive lock (oci.gc), after the mark: nothing here decides what lives.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Set as AbstractSet
from pathlib import Path

from imagekit.core import atomic
from imagekit.core.locking import remove_unheld
from imagekit.core.refs import BLOB_NAME
from imagekit.oci import roots as outside
from imagekit.oci.layout import Layout

_TEMP_RE = re.compile(r"new-(\d+)-.*", re.DOTALL)


def sweep_blobs(layout: Layout, marked: AbstractSet[str], dry_run: bool) -> tuple[list[str], int]:
    """Remove the blobs not ``marked``; the digests removed and the bytes they held."""
    removed, freed = [], 0
    # scandir gives names and types: no stat per kept blob. A name that is not a blob's is
    # left alone (fsck reports it).
    with os.scandir(layout.blobs_dir) as found:
        unmarked = sorted(
            (
                entry
                for entry in found
                if "sha256:" + entry.name not in marked
                and BLOB_NAME.fullmatch(entry.name)
                and entry.is_file(follow_symlinks=False)
            ),
            key=lambda entry: entry.name,
        )
    for entry in unmarked:
        removed.append("sha256:" + entry.name)
        freed += entry.stat(follow_symlinks=False).st_size
        if not dry_run:
            Path(entry.path).unlink()  # per removed blob only
    if removed and not dry_run:
        atomic.fsync_dir(layout.blobs_dir)
    return removed, freed


def sweep_locks(layout: Layout, dry_run: bool) -> list[str]:
    """Lock files in ``locks/`` and ``tmp/`` that no process holds (the store's ``.lock`` is
    gc's own). Safe against a process about to lock one: see ``locking.remove_unheld``."""
    removed = []
    for directory in (layout.locks_dir, layout.tmp_dir):
        for path in sorted(directory.glob("*.lock")):
            if remove_unheld(path, dry_run=dry_run):
                removed.append(str(path.relative_to(layout.root)))
    if removed and not dry_run:
        for directory in (layout.locks_dir, layout.tmp_dir):
            atomic.fsync_dir(directory)
    return removed


def sweep_tmp(layout: Layout, remove_partial: bool, dry_run: bool) -> tuple[list[str], int]:
    removed, freed = [], 0
    for path in sorted(layout.tmp_dir.iterdir()):
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


def sweep_roots(layout: Layout, dropped: dict[str, str], dry_run: bool) -> None:
    """Forget the outside roots found stale (unless ``dry_run``)."""
    if not dry_run:
        for path in dropped:
            outside.remove(layout, Path(path))


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
