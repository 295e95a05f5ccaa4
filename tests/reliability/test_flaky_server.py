"""A flaky or changing server, through a full pull: the right image or a clear error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import imagekit
from imagekit.errors import ChecksumError, FetchError, ImagekitError
from imagekit.net.transport import Transport
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.httpserver import LoopbackServer
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, misnamed_blobs, partial_size

FILENAME = "Flaky-Cloud-1.qcow2"
PATH = f"/pub/{FILENAME}"


def quick(retries: int = 5) -> Transport:
    return Transport(retries=retries, backoff=0.01, read_timeout=5)


def pull_with(store: Store, upstream: Upstream, retries: int = 5) -> imagekit.Image:
    recipe = imagekit.load_recipe(upstream.recipe(FILENAME))
    return store.pull(recipe, transport=quick(retries), refresh=True)


Fault = Callable[[LoopbackServer, int], None]


def busy_then_cut(s: LoopbackServer, n: int) -> None:
    s.fail_next(PATH, 503, 1)
    s.reset_after(PATH, 1000)


def no_ranges_and_cut(s: LoopbackServer, n: int) -> None:
    s.ignore_range(PATH)
    s.reset_after(PATH, n // 2)


def no_length_and_cut(s: LoopbackServer, n: int) -> None:
    s.omit_length(PATH)
    s.reset_after(PATH, n // 2)


RECOVERABLE: dict[str, Fault] = {
    "reset by peer twice mid-body": lambda s, n: s.reset_after(PATH, n // 3, 2, abort=True),
    "closed mid-body three times": lambda s, n: s.reset_after(PATH, n // 4, 3),
    "HTTP 500 four times": lambda s, n: s.fail_next(PATH, 500, 4),
    "HTTP 503 then a cut body": busy_then_cut,
    "ignores Range after a cut": no_ranges_and_cut,
    "no Content-Length, cut mid-body": no_length_and_cut,
}


@pytest.mark.parametrize("fault", list(RECOVERABLE))
def test_recoverable_faults_end_in_the_right_image(
    store: Store, upstream: Upstream, image_bytes: bytes, fault: str
) -> None:
    upstream.publish(FILENAME, image_bytes)
    RECOVERABLE[fault](upstream.server, len(image_bytes))

    image = pull_with(store, upstream)

    assert image.path.read_bytes() == image_bytes
    # The fault did happen: the first answer was an error or a cut body, and a retry followed.
    gets = [e for e in upstream.server.log(PATH) if e.method == "GET"]
    assert len(gets) > 1 and (gets[0].status >= 500 or gets[0].sent < len(image_bytes)), gets
    assert_consistent(store)
    figures.add("flaky-server cases ending in the right image")


def test_server_down_for_good_is_a_clear_error(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    upstream.server.fail_next(PATH, 500, 100)

    with pytest.raises(FetchError, match=r"after \d+ attempts .*HTTP 500"):
        pull_with(store, upstream, retries=2)
    assert list(store.blobs_dir.iterdir()) == []
    assert_consistent(store)
    figures.add("flaky-server cases ending in a clear error")


def cut_first_run(store: Store, upstream: Upstream, served: bytes) -> int:
    """Serve ``served``, cut the body halfway, give up at once: a partial is left to resume."""
    upstream.server.add(PATH, served)
    upstream.server.reset_after(PATH, len(served) // 2)
    with pytest.raises(FetchError, match="will resume"):
        pull_with(store, upstream, retries=0)
    kept = partial_size(store)
    assert kept == len(served) // 2
    assert_consistent(store)
    return kept


def test_file_replaced_by_a_forgery_between_runs_is_refused(
    store: Store, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    cut_first_run(store, upstream, image_bytes)
    upstream.server.replace(PATH, make_qcow2(tmp_path / "forged.qcow2", seed=77))

    with pytest.raises(ChecksumError, match="tampered"):
        pull_with(store, upstream)
    gets = [e for e in upstream.server.log(PATH) if e.method == "GET"]
    assert gets[-1].if_range is not None and gets[-1].status == 200  # If-Range did its job
    assert list(store.blobs_dir.iterdir()) == []
    assert partial_size(store) == 0  # a refused download is never resumed
    assert_consistent(store)
    figures.add("flaky-server cases ending in a clear error")


@pytest.mark.parametrize("ignores_if_range", [False, True])
def test_file_corrected_between_runs_ends_in_the_right_image(
    store: Store, upstream: Upstream, image_bytes: bytes, ignores_if_range: bool
) -> None:
    upstream.publish(FILENAME, image_bytes)
    stale = bytearray(image_bytes)
    stale[100:200] = bytes(100)  # the mirror first had a broken copy
    cut_first_run(store, upstream, bytes(stale))
    upstream.server.replace(PATH, image_bytes)
    upstream.server.ignore_if_range(PATH, ignores_if_range)

    image = pull_with(store, upstream)

    assert image.path.read_bytes() == image_bytes
    assert_consistent(store)
    figures.add("flaky-server cases ending in the right image")


def test_spliced_bytes_from_a_server_without_validators_never_reach_blobs(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    """Resuming onto another object with the same ETag splices two files: the digest catches it."""
    upstream.publish(FILENAME, image_bytes)
    stale = bytearray(image_bytes)
    stale[100:200] = bytes(100)
    cut_first_run(store, upstream, bytes(stale))
    # As if the first server had sent no ETag or Last-Modified: nothing to send If-Range with.
    sidecar = next(store.tmp_dir.glob("*.part.json"))
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "etag": None, "last_modified": None}))
    upstream.server.replace(PATH, image_bytes)

    with pytest.raises(ImagekitError) as exc:
        pull_with(store, upstream)
    assert isinstance(exc.value, ChecksumError), exc.value
    assert list(store.blobs_dir.iterdir()) == []
    assert misnamed_blobs(store) == []
    # The next run starts clean and gets the right bytes.
    assert pull_with(store, upstream).path.read_bytes() == image_bytes
    assert_consistent(store)
    figures.add("flaky-server cases ending in a clear error")
