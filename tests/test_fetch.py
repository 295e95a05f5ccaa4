"""The download stage against a real loopback server and real files: resume, retry, restart."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imagekit.errors import FetchError
from imagekit.net.download import Downloader, FetchResult
from imagekit.net.transport import Transport
from imagekit.progress import ProgressEvent
from tests.httpserver import LoopbackServer

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 << 10


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path / "tmp"


@pytest.fixture
def downloader(tmp_dir: Path) -> Downloader:
    return Downloader(
        tmp_dir, transport=Transport(retries=3, backoff=0.01, read_timeout=5), chunk_size=CHUNK
    )


def assert_complete(result: FetchResult, data: bytes) -> None:
    assert result.size == len(data)
    assert result.path.read_bytes() == data
    assert result.digests["sha256"] == sha256(data)


def seed_partial(tmp_dir: Path, name: str, url: str, prefix: bytes, etag: str | None) -> None:
    """Leave what an interrupted earlier run would have left behind."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / f"{name}.part").write_bytes(prefix)
    meta = {"url": url, "etag": etag, "last_modified": None}
    (tmp_dir / f"{name}.part.json").write_text(json.dumps(meta))


def etag_of(server: LoopbackServer, path: str) -> str:
    return requests.head(server.url(path), timeout=5).headers["ETag"]


def test_download_hashes_every_algorithm_while_writing(
    server: LoopbackServer, downloader: Downloader
) -> None:
    data = blob(300_000)
    server.add("img.qcow2", data)
    events: list[ProgressEvent] = []

    result = downloader.download(
        server.url("img.qcow2"), name="a", algorithms=["sha512"], progress=events.append
    )

    assert_complete(result, data)
    assert result.digests == {"sha256": sha256(data), "sha512": hashlib.sha512(data).hexdigest()}
    assert (result.resumed_from, result.transferred) == (0, len(data))
    assert result.path == downloader.tmp_dir / "a.part"
    assert result.etag == etag_of(server, "img.qcow2")
    assert result.last_modified is not None
    sidecar = json.loads((downloader.tmp_dir / "a.part.json").read_text())
    assert sidecar == {
        "url": server.url("img.qcow2"),
        "etag": result.etag,
        "last_modified": result.last_modified,
    }
    entry = server.log()[0]  # the GET; a HEAD from etag_of follows
    assert (entry.method, entry.range, entry.sent) == ("GET", None, len(data))
    assert entry.headers["User-Agent"].startswith("imagekit/")
    assert entry.headers["Accept-Encoding"] == "identity"
    assert events[-1] == ProgressEvent("fetch", "img.qcow2", len(data), len(data))


def test_resume_transfers_only_the_rest(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(500_000)
    server.add("img", data)
    etag = etag_of(server, "img")
    seed_partial(tmp_dir, "r", server.url("img"), data[:200_000], etag)
    server.clear_log()

    result = downloader.download(server.url("img"), name="r")

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (200_000, 300_000)
    (entry,) = server.log()
    assert (entry.range, entry.if_range, entry.status) == ("bytes=200000-", etag, 206)
    assert entry.sent == 300_000


def test_resume_after_kill_9_mid_download(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(20 << 20, seed=9)
    server.add("big.raw", data)
    server.throttle("big.raw", 4 << 20)
    url = server.url("big.raw")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from imagekit.net.download import Downloader
        Downloader(Path({str(tmp_dir)!r}), chunk_size={CHUNK}).download({url!r}, name="big")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    part = tmp_dir / "big.part"
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size >= 1 << 20):
            assert child.poll() is None, "the child finished or died before it could be killed"
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    server.throttle("big.raw", None)

    result = downloader.download(url, name="big")

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (kept, len(data) - kept)
    assert server.log()[-1].range == f"bytes={kept}-"


def test_server_ignoring_range_restarts_from_zero(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(200_000)
    server.add("img", data)
    seed_partial(tmp_dir, "i", server.url("img"), data[:50_000], etag_of(server, "img"))
    server.ignore_range("img")
    server.clear_log()

    result = downloader.download(server.url("img"), name="i")

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (0, len(data))
    assert [(e.range, e.status) for e in server.log()] == [("bytes=50000-", 200)]


def test_changed_etag_between_runs_fetches_the_new_content(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    old, new = blob(200_000, seed=1), blob(180_000, seed=2)
    server.add("img", old)
    seed_partial(tmp_dir, "e", server.url("img"), old[:100_000], etag_of(server, "img"))
    server.replace("img", new)
    server.clear_log()

    result = downloader.download(server.url("img"), name="e")

    assert_complete(result, new)
    assert result.etag == etag_of(server, "img")
    assert [e.status for e in server.log("img")][:1] == [200]


def test_206_with_a_different_etag_starts_over(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    old, new = blob(200_000, seed=1), blob(200_000, seed=2)
    server.add("img", old)
    seed_partial(tmp_dir, "e", server.url("img"), old[:100_000], etag_of(server, "img"))
    server.replace("img", new)
    server.ignore_if_range("img")
    server.clear_log()

    result = downloader.download(server.url("img"), name="e")

    assert_complete(result, new)
    assert [(e.range is None, e.status) for e in server.log()] == [(False, 206), (True, 200)]


def test_oversized_partial_is_discarded(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(100_000)
    server.add("img", data)
    seed_partial(tmp_dir, "o", server.url("img"), data + b"junk", etag_of(server, "img"))
    server.clear_log()

    result = downloader.download(server.url("img"), name="o")

    assert_complete(result, data)
    assert [e.status for e in server.log()] == [416, 200]


def test_partial_of_another_url_is_not_resumed(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(100_000)
    server.add("img", data)
    seed_partial(tmp_dir, "u", server.url("other"), data[:50_000], etag_of(server, "img"))
    server.clear_log()

    result = downloader.download(server.url("img"), name="u")

    assert_complete(result, data)
    assert result.resumed_from == 0
    assert [e.range for e in server.log()] == [None]


def test_connection_reset_mid_body_resumes(server: LoopbackServer, downloader: Downloader) -> None:
    data = blob(1 << 20)
    server.add("img", data)
    server.reset_after("img", 300_000, abort=True)

    result = downloader.download(server.url("img"), name="c")

    assert_complete(result, data)
    first, second = server.log()
    assert first.sent == 300_000
    # the reset destroys the read in progress, never more
    assert second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 300_000 - CHUNK <= resumed_at <= 300_000
    assert result.transferred == len(data)  # bytes lost with the RST never reached us


def test_truncated_response_resumes_where_it_stopped(
    server: LoopbackServer, downloader: Downloader
) -> None:
    data = blob(400_000)
    server.add("img", data)
    server.reset_after("img", 123_456)

    result = downloader.download(server.url("img"), name="t")

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (0, len(data))
    assert [(e.range, e.sent) for e in server.log()] == [
        (None, 123_456),
        ("bytes=123456-", len(data) - 123_456),
    ]


def test_stalled_body_times_out_and_resumes(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(150_000)
    server.add("img", data)
    server.throttle("img", 32 << 10)  # one 64 KiB block, then a 2 s stall
    downloader = Downloader(
        tmp_dir, transport=Transport(retries=1, backoff=0.01, read_timeout=0.5), chunk_size=CHUNK
    )

    result = downloader.download(server.url("img"), name="st")

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (0, len(data))
    # The server never failed: only a read timeout ends a response early. Each stall did, and
    # the next request asked for exactly the bytes after the ones kept.
    first, *resumed = server.log("img")
    assert (first.range, first.status) == (None, 200)
    assert resumed and all(entry.status == 206 for entry in resumed), server.log()
    starts = [int((entry.range or "").removeprefix("bytes=").rstrip("-")) for entry in resumed]
    assert starts[0] > 0 and starts == sorted(set(starts)) and starts[-1] < len(data), starts


def test_server_errors_are_retried(server: LoopbackServer, downloader: Downloader) -> None:
    data = blob(50_000)
    server.add("img", data)
    server.fail_next("img", 500, times=2)

    result = downloader.download(server.url("img"), name="s")

    assert_complete(result, data)
    assert [e.status for e in server.log()] == [500, 500, 200]


def test_giving_up_keeps_the_partial_for_the_next_run(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    data = blob(50_000)
    server.add("img", data)
    seed_partial(tmp_dir, "g", server.url("img"), data[:10_000], etag_of(server, "img"))
    server.fail_next("img", 503, times=100)
    server.clear_log()

    with pytest.raises(FetchError, match=r"after 4 attempts \(HTTP 503.*kept and will resume"):
        downloader.download(server.url("img"), name="g")

    assert len(server.log()) == 4
    assert (tmp_dir / "g.part").read_bytes() == data[:10_000]
    server.fail_next("img", 503, times=0)
    assert downloader.download(server.url("img"), name="g").resumed_from == 10_000


def test_not_found_fails_at_once(server: LoopbackServer, downloader: Downloader) -> None:
    with pytest.raises(FetchError, match=r"missing\.img: HTTP 404, not found — check the recipe"):
        downloader.download(server.url("missing.img"), name="n")
    assert len(server.log()) == 1


def test_expected_size_mismatch_deletes_the_partial(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    server.add("img", blob(100_000))

    with pytest.raises(FetchError, match="is 100000 bytes but 100001 were expected"):
        downloader.download(server.url("img"), name="x", expected_size=100_001)

    assert list(tmp_dir.glob("x.part*")) == []


def test_body_beyond_expected_size_stops_the_download(
    server: LoopbackServer, downloader: Downloader, tmp_dir: Path
) -> None:
    server.add("img", blob(1 << 20))
    server.omit_length("img")  # the size is learnt only by reading

    with pytest.raises(FetchError, match="but 200000 were expected"):
        downloader.download(server.url("img"), name="y", expected_size=200_000)

    assert list(tmp_dir.glob("y.part*")) == []


def test_body_without_length_completes_at_eof(
    server: LoopbackServer, downloader: Downloader
) -> None:
    data = blob(300_000)
    server.add("img", data)
    server.omit_length("img")

    assert_complete(downloader.download(server.url("img"), name="z", expected_size=300_000), data)


def test_file_url_is_copied_and_hashed(downloader: Downloader, tmp_path: Path) -> None:
    data = blob(150_000)
    source = tmp_path / "my disk.raw"
    source.write_bytes(data)

    result = downloader.download(source.as_uri(), name="f", algorithms=["sha512"])

    assert_complete(result, data)
    assert result.digests["sha512"] == hashlib.sha512(data).hexdigest()
    assert (result.url, result.etag, result.transferred) == (source.as_uri(), None, len(data))
    with pytest.raises(FetchError, match="does not exist"):
        downloader.download((tmp_path / "nope").as_uri(), name="f2")


def test_disk_full_keeps_a_resumable_partial(
    server: LoopbackServer, downloader: Downloader, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(500_000)
    server.add("img", data)
    real_write = os.write
    room = [200_000]

    def write_until_full(fd: int, buf: bytes) -> int:
        """os.write, except that the partial file's disk fills up after ``room`` bytes."""
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("a.part"):
            return real_write(fd, buf)
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, memoryview(buf)[: room[0]])
        room[0] -= n
        return n

    monkeypatch.setattr(os, "write", write_until_full)
    with pytest.raises(FetchError, match=r"disk full while writing .*a\.part: free space in"):
        downloader.download(server.url("img"), name="a")
    monkeypatch.undo()

    assert (downloader.tmp_dir / "a.part").read_bytes() == data[:200_000]
    result = downloader.download(server.url("img"), name="a")
    assert_complete(result, data)
    assert result.resumed_from == 200_000


def test_concurrent_downloads_of_one_name_never_share_a_writer(
    server: LoopbackServer, tmp_dir: Path
) -> None:
    data = blob(1 << 20)
    server.add("img", data)
    server.throttle("img", 4 << 20)  # long enough for the second caller to wait on the lock
    results: list[FetchResult] = []

    def run() -> None:
        d = Downloader(tmp_dir, transport=Transport(retries=1, backoff=0.01), chunk_size=CHUNK)
        results.append(d.download(server.url("img"), name="same"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)

    assert len(results) == 2
    for result in results:
        assert_complete(result, data)
    assert server.sent("img") <= 2 * len(data)
    # the one that waited finds the partial complete and transfers nothing
    assert sorted(e.status for e in server.log()) == [200, 416]
    assert sorted(r.transferred for r in results) == [0, len(data)]


def test_progress_is_throttled(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(256_000)
    server.add("img", data)
    server.throttle("img", 640_000)  # ~0.4 s in ~63 chunks
    events: list[ProgressEvent] = []

    Downloader(tmp_dir, chunk_size=4096).download(
        server.url("img"), name="p", progress=events.append
    )

    assert 2 <= len(events) <= 8
    assert events[-1].done == events[-1].total == len(data)


def test_fetch_small(server: LoopbackServer, downloader: Downloader, tmp_path: Path) -> None:
    transport = downloader.transport
    server.add("SHA256SUMS", b"abc  img\n")
    server.fail_next("SHA256SUMS", 502)
    assert transport.fetch_small(server.url("SHA256SUMS")).body == b"abc  img\n"
    assert [e.status for e in server.log()] == [502, 200]

    with pytest.raises(FetchError, match="larger than 4 bytes"):
        transport.fetch_small(server.url("SHA256SUMS"), max_bytes=4)
    server.omit_length("SHA256SUMS")
    with pytest.raises(FetchError, match="larger than 4 bytes"):
        transport.fetch_small(server.url("SHA256SUMS"), max_bytes=4)
    with pytest.raises(FetchError, match="404, not found"):
        transport.fetch_small(server.url("nope"))

    local = tmp_path / "sums"
    local.write_bytes(b"x" * 10)
    assert transport.fetch_small(local.as_uri()).body == b"x" * 10
    with pytest.raises(FetchError, match="larger than 9 bytes"):
        transport.fetch_small(local.as_uri(), max_bytes=9)


def test_unreachable_server_is_retried_then_reported(downloader: Downloader) -> None:
    with LoopbackServer() as srv:
        url = srv.url("img")
    with pytest.raises(FetchError, match=r"could not download .* after 4 attempts"):
        downloader.download(url, name="d")


@pytest.mark.parametrize("url", ["ftp://example.org/x", "/local/path.img"])
def test_unsupported_urls_are_refused(downloader: Downloader, url: str) -> None:
    with pytest.raises(FetchError, match="only http://, https:// and file://"):
        downloader.download(url, name="q")
