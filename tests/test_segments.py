"""Segmented downloads against real loopback servers: several Range connections, mirrors,
one in-order hash, resume from the recorded segments, and the fall back to one connection."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagekit
from imagekit.errors import ChecksumError, FetchError
from imagekit.net.download import Downloader, FetchResult
from imagekit.net.ranges import Ramp
from imagekit.net.transport import Transport
from imagekit.progress import ProgressEvent
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.httpserver import LoopbackServer

SEGMENT = 256 << 10
CHUNK = 64 << 10
SIZE = 16 * SEGMENT + 12345  # a short last segment too


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path / "tmp"


def downloader(tmp_dir: Path, connections: int = 4) -> Downloader:
    return Downloader(
        tmp_dir,
        transport=Transport(retries=3, backoff=0.01, read_timeout=5),
        chunk_size=CHUNK,
        connections=connections,
        segment_size=SEGMENT,
    )


def assert_complete(result: FetchResult, data: bytes) -> None:
    assert result.size == len(data)
    assert result.path.read_bytes() == data
    assert result.digests == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }


def ranges(server: LoopbackServer, path: str) -> list[tuple[str | None, int]]:
    return [(e.range, e.status) for e in server.log(path)]


def test_segments_come_over_several_connections_and_hash_in_order(
    server: LoopbackServer, tmp_dir: Path
) -> None:
    data = blob(SIZE, seed=1)
    server.add("img.raw", data)
    server.throttle("img.raw", 2 << 20)  # each response lasts long enough for them to overlap
    events: list[ProgressEvent] = []

    result = downloader(tmp_dir).download(
        server.url("img.raw"), name="img", algorithms=["sha512"], progress=events.append
    )

    assert_complete(result, data)
    assert (result.resumed_from, result.transferred) == (0, len(data))
    log = ranges(server, "img.raw")
    assert log[0] == ("bytes=0-0", 206)  # the probe: ranges work, and the length
    wanted = {(f"bytes={i}-{min(i + SEGMENT, SIZE) - 1}", 206) for i in range(0, SIZE, SEGMENT)}
    assert sorted(log[1:]) == sorted(wanted)  # each segment asked for once, nothing more
    assert 2 <= server.peak_in_flight <= 4
    assert events[-1].done == events[-1].total == len(data)
    sidecar = json.loads(result.path.with_name("img.part.json").read_text())
    assert sorted(sidecar["segments"]["done"]) == list(range(17))


def test_server_ignoring_range_falls_back_to_one_connection(
    server: LoopbackServer, tmp_dir: Path
) -> None:
    data = blob(SIZE, seed=2)
    server.add("img.raw", data)
    server.ignore_range("img.raw")

    result = downloader(tmp_dir).download(server.url("img.raw"), name="img")

    assert result.path.read_bytes() == data
    # the probe's 200 is closed unread: only the second request's body counts
    assert [(r, s) for r, s in ranges(server, "img.raw")] == [("bytes=0-0", 200), (None, 200)]
    assert result.transferred == len(data)


def test_small_files_take_one_connection(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SEGMENT, seed=3)
    server.add("small.raw", data)
    url = server.url("small.raw")

    downloader(tmp_dir).download(url, name="a", expected_size=len(data))
    assert ranges(server, "small.raw") == [(None, 200)]  # known small: not even a probe

    server.clear_log()
    result = downloader(tmp_dir).download(url, name="b")
    assert result.path.read_bytes() == data
    assert ranges(server, "small.raw") == [("bytes=0-0", 206), (None, 200)]


def test_one_connection_setting_streams_as_before(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=4)
    server.add("img.raw", data)
    result = downloader(tmp_dir, connections=1).download(server.url("img.raw"), name="img")
    assert result.path.read_bytes() == data
    assert ranges(server, "img.raw") == [(None, 200)]


def test_recorded_segments_are_not_fetched_again(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=5)
    server.add("img.raw", data)
    url = server.url("img.raw")
    first = downloader(tmp_dir).download(url, name="img")
    # as a killed run leaves it: segments 0-5 and 9 complete, the rest never written (holes)
    done = [0, 1, 2, 3, 4, 5, 9]
    with first.path.open("r+b") as f:
        for i in range(17):
            if i not in done:
                f.seek(i * SEGMENT)
                f.write(bytes(min(SEGMENT, SIZE - i * SEGMENT)))
    sidecar = first.path.with_name("img.part.json")
    meta = json.loads(sidecar.read_text())
    meta["segments"]["done"] = done
    sidecar.write_text(json.dumps(meta))
    server.clear_log()

    result = downloader(tmp_dir).download(url, name="img", algorithms=["sha512"])

    assert_complete(result, data)
    kept = len(done) * SEGMENT
    assert (result.resumed_from, result.transferred) == (kept, len(data) - kept)
    assert server.sent("img.raw") == 1 + len(data) - kept  # the probe's byte, and the rest
    assert all(e.if_range == first.etag for e in server.log("img.raw"))


def test_changed_file_discards_the_recorded_segments(server: LoopbackServer, tmp_dir: Path) -> None:
    old, new = blob(SIZE, seed=6), blob(SIZE, seed=7)
    server.add("img.raw", old)
    url = server.url("img.raw")
    first = downloader(tmp_dir).download(url, name="img")
    sidecar = first.path.with_name("img.part.json")
    meta = json.loads(sidecar.read_text())
    meta["segments"]["done"] = [0, 1]
    sidecar.write_text(json.dumps(meta))
    server.replace("img.raw", new)
    server.clear_log()

    result = downloader(tmp_dir).download(url, name="img")

    assert result.path.read_bytes() == new
    assert result.resumed_from == 0
    # If-Range no longer matched: the 200 said "changed", and one connection fetched it anew
    assert [s for _, s in ranges(server, "img.raw")] == [200, 200]


def test_a_cut_segment_resumes_where_it_stopped(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=8)
    server.add("img.raw", data)
    server.reset_after("img.raw", 100_000, times=3)  # the probe (its one byte gets through), two

    result = downloader(tmp_dir).download(server.url("img.raw"), name="img")

    assert result.path.read_bytes() == data
    assert result.transferred == len(data)
    asked = {e.range for e in server.log("img.raw")}
    cut = [e.range or "" for e in server.log("img.raw") if e.sent == 100_000]
    assert len(cut) == 2
    for cut_range in cut:
        start, end = cut_range.removeprefix("bytes=").split("-")
        assert f"bytes={int(start) + 100_000}-{end}" in asked  # the rest of it, not all again


def test_segments_are_spread_over_mirrors(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=9)
    server.add("pub/img.raw", data)
    server.throttle("pub/img.raw", 2 << 20)
    with LoopbackServer(rate=2 << 20) as other:
        other.add("mirror/img.raw", data)
        result = downloader(tmp_dir).download(
            server.url("pub/img.raw"), name="img", mirrors=[other.url("mirror/img.raw")]
        )
        assert result.path.read_bytes() == data
        from_mirror = [e for e in other.log() if e.status == 206]
    from_primary = [e for e in server.log() if e.status == 206 and e.range != "bytes=0-0"]
    assert from_mirror and from_primary
    assert len(from_mirror) + len(from_primary) == 17
    assert result.url == server.url("pub/img.raw")


def test_a_mirror_without_ranges_is_dropped(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=10)
    server.add("img.raw", data)
    with LoopbackServer() as other:
        other.add("img.raw", data)
        other.ignore_range("img.raw")
        result = downloader(tmp_dir).download(
            server.url("img.raw"), name="img", mirrors=[other.url("img.raw")]
        )
        # asked by the workers that turned to it at once (2 of 4 start there), then never again
        assert [e.status for e in other.log()] in ([200], [200, 200])
    assert result.path.read_bytes() == data
    assert result.transferred == len(data)


def test_a_mirror_serving_other_bytes_changes_the_digest(
    server: LoopbackServer, tmp_dir: Path
) -> None:
    """The digest covers every byte, whichever mirror sent it: the caller's check catches it."""
    data = blob(SIZE, seed=11)
    server.add("img.raw", data)
    server.throttle("img.raw", 2 << 20)
    with LoopbackServer(rate=2 << 20) as other:
        other.add("img.raw", blob(SIZE, seed=12))
        result = downloader(tmp_dir).download(
            server.url("img.raw"), name="img", mirrors=[other.url("img.raw")]
        )
        assert any(e.status == 206 for e in other.log())
    assert result.digests["sha256"] != hashlib.sha256(data).hexdigest()
    assert result.digests["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()


def test_a_mirror_of_another_length_is_dropped(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=13)
    server.add("img.raw", data)
    with LoopbackServer() as other:
        other.add("img.raw", data + b"more")
        result = downloader(tmp_dir).download(
            server.url("img.raw"), name="img", mirrors=[other.url("img.raw")]
        )
        assert len(other.log()) <= 2  # the workers that turned to it at once
    assert result.path.read_bytes() == data


def test_expected_size_mismatch_is_refused_before_any_segment(
    server: LoopbackServer, tmp_dir: Path
) -> None:
    server.add("img.raw", blob(SIZE))
    with pytest.raises(FetchError, match="were expected"):
        downloader(tmp_dir).download(server.url("img.raw"), name="img", expected_size=SIZE + 1)
    assert ranges(server, "img.raw") == [("bytes=0-0", 206)]
    assert not list(tmp_dir.glob("img.part*"))


def test_giving_up_keeps_the_complete_segments(server: LoopbackServer, tmp_dir: Path) -> None:
    data = blob(SIZE, seed=14)
    server.add("img.raw", data)
    url = server.url("img.raw")
    d = Downloader(
        tmp_dir,
        transport=Transport(retries=1, backoff=0.01, read_timeout=5),
        chunk_size=CHUNK,
        connections=2,
        segment_size=SEGMENT,
    )
    first = d.download(url, name="img")
    sidecar = first.path.with_name("img.part.json")
    meta = json.loads(sidecar.read_text())
    meta["segments"]["done"] = [0, 1]  # as a run that got two segments leaves it
    sidecar.write_text(json.dumps(meta))
    server.fail_next("img.raw", 503, times=50)

    with pytest.raises(FetchError, match="run again"):
        d.download(url, name="img")

    assert json.loads(sidecar.read_text())["segments"]["done"] == [0, 1]
    server.fail_next("img.raw", 503, times=0)
    server.clear_log()
    result = d.download(url, name="img")
    assert result.path.read_bytes() == data
    assert result.transferred == len(data) - 2 * SEGMENT


# --- through a pull: recipe and config mirrors, the checksum as the judge -------------------

MIRRORED = "Mirrored-Cloud-1.qcow2"


@pytest.fixture(scope="module")
def three_segments(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A qcow2 just over two default (8 MiB) segments: the first comes alone (it measures one
    connection), the next two at once, one of them from a mirror."""
    return make_qcow2(tmp_path_factory.mktemp("seg") / "disk.qcow2", size=16 << 20, seed=21)


def test_a_pull_takes_segments_from_the_recipes_mirrors(
    upstream: Upstream, tmp_path: Path, three_segments: bytes
) -> None:
    upstream.publish(MIRRORED, three_segments)
    upstream.server.throttle(f"/pub/{MIRRORED}", 16 << 20)  # the other workers start meanwhile
    with LoopbackServer() as other:
        other.add(f"/copy/{MIRRORED}", three_segments)
        root = other.url("/copy/")
        recipe = upstream.recipe(MIRRORED, extra=f'mirrors = ["{root}"]\n')
        image = Store(tmp_path / "store").pull(imagekit.load_recipe(recipe))
        from_mirror = [e.range for e in other.log() if e.status == 206]
    assert image.path.read_bytes() == three_segments
    from_upstream = [e.range for e in upstream.server.log(f"/pub/{MIRRORED}") if e.status == 206]
    assert from_mirror and len(from_upstream) >= 2  # the probe, and at least one segment
    assert image.provenance["source"]["mirrors"] == [root + MIRRORED]
    assert image.provenance["source"]["fetched_from"] == upstream.server.url(f"/pub/{MIRRORED}")


def test_pull_connections_flag_overrides_the_config(
    upstream: Upstream, tmp_path: Path, three_segments: bytes
) -> None:
    """``--connections 1`` streams the image in one request where the default takes segments;
    a value out of range is a usage error before anything is fetched."""
    upstream.publish(MIRRORED, three_segments)
    recipe = str(upstream.recipe(MIRRORED))
    command = [sys.executable, "-m", "imagekit", "pull", recipe, "--store", str(tmp_path / "s")]
    for bad in ("0", "17"):
        refused = subprocess.run([*command, "--connections", bad], capture_output=True, text=True)
        assert refused.returncode == 2 and "--connections" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    upstream.server.clear_log()
    pulled = subprocess.run([*command, "--connections", "1"], capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    requests = upstream.server.log(f"/pub/{MIRRORED}")
    assert [e.status for e in requests if e.method == "GET"] == [200]  # one stream, no Range
    assert Store(tmp_path / "s").image("test-cloud:1").path.read_bytes() == three_segments
    upstream.server.clear_log()
    default = [*command[:-1], str(tmp_path / "default")]
    assert subprocess.run(default, capture_output=True, text=True).returncode == 0
    assert 206 in [e.status for e in upstream.server.log(f"/pub/{MIRRORED}")]  # segments


def test_a_config_mirror_serving_other_bytes_fails_the_pull_and_stores_nothing(
    upstream: Upstream, tmp_path: Path, three_segments: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.publish(MIRRORED, three_segments)
    upstream.server.throttle(f"/pub/{MIRRORED}", 16 << 20)  # the other workers start meanwhile
    home = tmp_path / "xdg"
    (home / "imagekit").mkdir(parents=True)
    with LoopbackServer() as other:
        other.add(f"/copy/{MIRRORED}", blob(len(three_segments), seed=22))
        config = f'connections = 2\nmirrors = ["{other.url("/copy/")}"]\n'
        (home / "imagekit" / "config.toml").write_text(config)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
        store = imagekit.open_store(tmp_path / "store")
        assert (store.connections, len(store.mirrors)) == (2, 1)
        with pytest.raises(ChecksumError):
            store.pull(imagekit.load_recipe(upstream.recipe(MIRRORED)))
        assert any(e.status == 206 for e in other.log())
    assert store.refs() == []
    assert not list(store.tmp_dir.glob("*.part*"))
    assert not (store.blobs_dir / hashlib.sha256(three_segments).hexdigest()).exists()


def test_the_ramp_keeps_all_connections_only_when_they_beat_one() -> None:
    capped = Ramp(4)
    assert capped.allowed == 1  # the first segment alone
    capped.done(8 << 20, 0.2, 8 << 20, now=0.2)  # one connection: 42 MB/s
    assert capped.allowed == 4
    for k in range(1, 5):  # four at once: 4 x 42 MB/s
        capped.done(8 << 20, 0.2, (8 << 20) * (1 + k), now=0.2 + 0.2 * k / 4)
    assert capped.allowed == 4

    local = Ramp(4)
    local.done(8 << 20, 0.02, 8 << 20, now=0.02)  # one connection: 420 MB/s
    for k in range(1, 5):  # four at once were no faster than that one
        local.done(8 << 20, 0.08, (8 << 20) * (1 + k), now=0.02 + 0.02 * k * 1.1)
    assert local.allowed == 1
