"""gc sweeps lock files nobody holds (``locks/``, ``tmp/``) and never breaks a lock in use.

Holders are real: another process with flock, and FileLock in this one. The race that matters
(a process between open() and flock() when gc unlinks the file) is staged with a thread paused
at exactly that point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.core.locking import FileLock
from imagekit.errors import StoreError
from imagekit.store import Store

HOLDER = """
import sys
from pathlib import Path
from imagekit.core.locking import FileLock
lock = FileLock(Path(sys.argv[1]), shared=sys.argv[2] == "shared")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(store: Store) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``locks/held-by-process.lock`` shared, until the test ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.locks_dir / "held-by-process.lock"), "shared"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "locked\n"
    yield child
    child.communicate(timeout=30)


def still_excludes(path: Path) -> bool:
    """Whether somebody holds the lock at ``path``: a fresh exclusive FileLock times out."""
    lock = FileLock(path, timeout=0.2)
    try:
        lock.acquire()
    except StoreError:
        return True
    lock.release()
    return False


def test_gc_removes_abandoned_lock_files_and_keeps_held_ones(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    abandoned = [store.locks_dir / "sha256-abc.lock", store.tmp_dir / "image.lock"]
    for path in abandoned:
        path.write_bytes(b"")
    with store.digest_lock("build-1"):  # a lock left behind by a finished build
        pass
    held_here = store.tmp_dir / "downloading.lock"
    by_process = store.locks_dir / "held-by-process.lock"
    expected = ["locks/build-1.lock", "locks/sha256-abc.lock", "tmp/image.lock"]

    with FileLock(held_here):
        dry = store.gc(dry_run=True)
        assert sorted(dry.removed_locks) == expected
        assert all(p.exists() for p in abandoned)
        report = store.gc()
        assert sorted(report.removed_locks) == expected
        assert not any(p.exists() for p in abandoned)
        assert not (store.locks_dir / "build-1.lock").exists()
        assert held_here.exists() and by_process.exists()
        assert (store.root / ".lock").exists()  # the store's own lock is gc's, never swept
        assert still_excludes(held_here) and still_excludes(by_process)

    swept = subprocess.run(
        [sys.executable, "-m", "imagekit", "gc", "--store", str(store.root), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["removed_locks"] == ["tmp/downloading.lock"]
    assert by_process.exists() and still_excludes(by_process)


def test_a_lock_file_swept_between_open_and_flock_still_excludes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.locks_dir / "contended.lock"
    opened, go = threading.Event(), threading.Event()
    original = FileLock._lock

    def paused(self: FileLock, fd: int, mode: int, deadline: float | None) -> None:
        opened.set()  # the file is open, not yet locked: gc may unlink it now
        go.wait(30)
        original(self, fd, mode, deadline)

    monkeypatch.setattr(FileLock, "_lock", paused)
    late = FileLock(path)
    waiter = threading.Thread(target=late.acquire)
    waiter.start()
    assert opened.wait(30)
    monkeypatch.setattr(FileLock, "_lock", original)  # gc and the checks below lock normally

    assert store.gc().removed_locks == ["locks/contended.lock"]
    assert not path.exists()
    go.set()
    waiter.join(30)
    try:
        assert path.exists()  # it retried on a fresh file at the path, and holds that
        assert still_excludes(path)
        assert store.gc().removed_locks == []
    finally:
        late.release()
    assert not still_excludes(path)
