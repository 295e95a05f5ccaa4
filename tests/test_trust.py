"""Trust that rests on transport or on stored bytes, against a real HTTPS server on loopback.

``checksum-over-tls`` is only as good as the connection the evidence really came over, so the
level is decided by the final URL of each request after redirects, and a redirect off https is
refused where the level rests on it. A blob already in the store stands in for a download, so
it is checked like one before it is reused.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest
import requests

import imagekit
from imagekit.net.metadata import UpstreamCache
from imagekit.net.transport import Transport
from imagekit.store import Store
from tests import mirrors
from tests.conftest import Upstream
from tests.httpserver import LoopbackServer, TestCA, make_test_ca
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent, misnamed_blobs

FILENAME = "Tls-Cloud-1.qcow2"


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls(test_ca: TestCA) -> Iterator[LoopbackServer]:
    with LoopbackServer(tls=test_ca) as running:
        yield running


def trusting(ca: TestCA) -> Transport:
    """A transport whose Session trusts the test CA, and only for this client."""
    session = requests.Session()
    session.verify = str(ca.ca_cert)
    return Transport(session=session, retries=0)


def publish(server: LoopbackServer, data: bytes, directory: str = "/pub/") -> None:
    """The image and an unsigned CHECKSUM for it, as CentOS or AlmaLinux publish them."""
    server.add(directory + FILENAME, data)
    digest = hashlib.sha256(data).hexdigest()
    server.add(directory + "CHECKSUM", f"SHA256 ({FILENAME}) = {digest}\n".encode())


def tls_recipe(image_url: str, checksum_url: str) -> imagekit.Recipe:
    return imagekit.load_recipe_string(
        f'name = "tls-cloud"\nversion = "1"\n[source]\nkind = "http"\n'
        f'level = "checksum-over-tls"\nurl = "{image_url}"\nchecksum_url = "{checksum_url}"\n'
    )


def image_gets(server: LoopbackServer, path: str = "/pub/" + FILENAME) -> int:
    return len([e for e in server.log(path) if e.method == "GET" and e.status == 200])


# TLS: the final URL decides


def test_https_checksum_is_checksum_over_tls(
    store: Store, tls: LoopbackServer, test_ca: TestCA, image_bytes: bytes
) -> None:
    publish(tls, image_bytes)
    checksum_url = tls.url("/pub/CHECKSUM")

    image = store.pull(
        tls_recipe(tls.url("/pub/" + FILENAME), checksum_url), transport=trusting(test_ca)
    )

    assert image.verification == "checksum-over-tls"
    assert image.provenance["verification"]["checksum_transport"] == "https"
    source = image.provenance["source"]
    assert source["checksum_url_fetched"] == checksum_url
    assert source["fetched_from"] == tls.url("/pub/" + FILENAME)


@pytest.mark.parametrize("allow_loopback_http", [False, True])
def test_a_redirect_from_https_to_http_for_the_checksum_is_refused(
    store: Store,
    tls: LoopbackServer,
    server: LoopbackServer,
    test_ca: TestCA,
    image_bytes: bytes,
    allow_loopback_http: bool,
) -> None:
    """Refused even when the http target is loopback and loopback http is allowed: a downgrade
    is not what the recipe asked for."""
    publish(tls, image_bytes)
    publish(server, image_bytes)
    tls.redirect("/pub/CHECKSUM", server.url("/pub/CHECKSUM"))
    recipe = tls_recipe(tls.url("/pub/" + FILENAME), tls.url("/pub/CHECKSUM"))

    both = f"{tls.url('/pub/CHECKSUM')} was redirected to {server.url('/pub/CHECKSUM')}"
    with pytest.raises(imagekit.VerificationError, match=re.escape(both)):
        store.pull(recipe, transport=trusting(test_ca), allow_loopback_http=allow_loopback_http)

    assert image_gets(tls) == image_gets(server) == 0  # refused before the image was asked for
    assert store.refs() == []
    figures.add("TLS downgrades of evidence refused")


def test_a_redirect_from_http_to_https_counts_as_tls(
    store: Store, tls: LoopbackServer, server: LoopbackServer, test_ca: TestCA, image_bytes: bytes
) -> None:
    publish(tls, image_bytes)
    server.redirect("/pub/CHECKSUM", tls.url("/pub/CHECKSUM"))

    image = store.pull(
        tls_recipe(tls.url("/pub/" + FILENAME), server.url("/pub/CHECKSUM")),
        transport=trusting(test_ca),
    )

    assert image.verification == "checksum-over-tls"
    assert image.provenance["verification"]["checksum_transport"] == "https"
    assert image.provenance["source"]["checksum_url"] == server.url("/pub/CHECKSUM")
    assert image.provenance["source"]["checksum_url_fetched"] == tls.url("/pub/CHECKSUM")


def test_the_image_records_the_url_its_bytes_came_from(
    store: Store, tls: LoopbackServer, server: LoopbackServer, test_ca: TestCA, image_bytes: bytes
) -> None:
    """The image's own transport decides no level (every level checks its digest), so a
    redirect off https is followed; provenance says where the bytes really came from."""
    publish(tls, image_bytes)
    publish(server, image_bytes)
    tls.redirect("/pub/" + FILENAME, server.url("/pub/" + FILENAME))

    image = store.pull(
        tls_recipe(tls.url("/pub/" + FILENAME), tls.url("/pub/CHECKSUM")),
        transport=trusting(test_ca),
    )

    assert image.verification == "checksum-over-tls"
    assert image.provenance["source"]["fetched_from"] == server.url("/pub/" + FILENAME)
    assert image.path.read_bytes() == image_bytes


def test_signed_evidence_may_come_over_http_and_says_so(
    store: Store, tls: LoopbackServer, upstream: Upstream, test_ca: TestCA, image_bytes: bytes
) -> None:
    """A signature does not rest on TLS: mirror redirectors (Fedora's) may send https to http."""
    upstream.publish(FILENAME, image_bytes)
    tls.redirect("/pub/CHECKSUM", upstream.server.url("/pub/CHECKSUM"))
    recipe = upstream.recipe(FILENAME, base=tls.url("/pub/"))
    tls.redirect("/pub/" + FILENAME, upstream.server.url("/pub/" + FILENAME))

    image = store.pull(imagekit.load_recipe(recipe), transport=trusting(test_ca))

    assert image.verification == "signed"
    source = image.provenance["source"]
    assert source["checksum_url_fetched"] == upstream.server.url("/pub/CHECKSUM")
    assert image.provenance["verification"]["checksum_transport"] is None


DEBIAN_JSON = "/d/bookworm/latest/debian-12-genericcloud-amd64.json"


def test_downgraded_metadata_is_refused_where_the_level_rests_on_tls(
    store: Store, tls: LoopbackServer, server: LoopbackServer, test_ca: TestCA, image_bytes: bytes
) -> None:
    """Debian's JSON chooses the file (and states its digest): it is evidence like SHA512SUMS."""
    image_path = mirrors.debian(
        tls, "/d/", release="12", codename="bookworm", debian_arch="amd64", data=image_bytes
    )
    mirrors.debian(
        server, "/d/", release="12", codename="bookworm", debian_arch="amd64", data=image_bytes
    )
    recipe = imagekit.load_recipe("debian:12", arch="x86_64")
    pulled = store.pull(recipe, mirror=tls.url("/d/"), transport=trusting(test_ca))
    assert pulled.verification == "checksum-over-tls"
    assert pulled.provenance["source"]["metadata_fetched"] == [tls.url(DEBIAN_JSON)]

    tls.redirect(DEBIAN_JSON, server.url(DEBIAN_JSON))
    both = (
        f"{re.escape(tls.url(DEBIAN_JSON))} was redirected to {re.escape(server.url(DEBIAN_JSON))}"
    )
    with pytest.raises(imagekit.VerificationError, match=both):
        store.pull(
            recipe,
            mirror=tls.url("/d/"),
            transport=trusting(test_ca),
            refresh=True,
            allow_loopback_http=True,
        )
    assert image_gets(tls, image_path) == 1 and image_gets(server, image_path) == 0
    figures.add("TLS downgrades of evidence refused")


# The metadata cache keeps the final URL


def test_the_cache_keeps_the_final_url_and_forgets_entries_without_one(
    tls: LoopbackServer, server: LoopbackServer, test_ca: TestCA, tmp_path: Path
) -> None:
    tls.add("/CHECKSUM", b"v1")
    server.redirect("/CHECKSUM", tls.url("/CHECKSUM"))
    asked = server.url("/CHECKSUM")
    with UpstreamCache(tmp_path / "cache", trusting(test_ca)) as cache:
        assert cache.fetch(asked).url == tls.url("/CHECKSUM")
    tls.clear_log()
    with UpstreamCache(tmp_path / "cache", trusting(test_ca), offline=True) as cache:
        fetched = cache.fetch(asked)
    assert (fetched.body, fetched.url) == (b"v1", tls.url("/CHECKSUM"))
    assert tls.log() == []

    # An entry written before the final URL was kept: as if never fetched.
    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        old = {"body": b"old", "etag": None, "last_modified": None, "checked": time.time()}
        raw.set(("url", asked), old)
    with (
        UpstreamCache(tmp_path / "cache", trusting(test_ca), offline=True) as cache,
        pytest.raises(imagekit.FetchError, match="never fetched"),
    ):
        cache.fetch(asked)
    with UpstreamCache(tmp_path / "cache", trusting(test_ca)) as cache:
        assert cache.fetch(asked) == cache.fetch(asked)
        assert (cache.fetch(asked).body, cache.fetch(asked).url) == (b"v1", tls.url("/CHECKSUM"))
    assert len(tls.log("/CHECKSUM")) == 1


def test_not_modified_from_another_final_url_is_fetched_again(
    tls: LoopbackServer, server: LoopbackServer, test_ca: TestCA, tmp_path: Path
) -> None:
    """A 304 vouches for the cached body only if it came by the URL that body came by."""
    for each in (server, tls):
        each.add("/CHECKSUM", b"same bytes, same ETag")
        each.conditional("/CHECKSUM")
    asked = server.url("/CHECKSUM")
    with UpstreamCache(tmp_path / "cache", trusting(test_ca)) as cache:
        assert cache.fetch(asked).url == asked
    with UpstreamCache(tmp_path / "cache", trusting(test_ca), ttl=0) as cache:
        assert cache.fetch(asked).url == asked  # a 304 by the same URL keeps the entry
    assert [e.status for e in server.log("/CHECKSUM")] == [200, 304]

    server.redirect("/CHECKSUM", tls.url("/CHECKSUM"))
    with UpstreamCache(tmp_path / "cache", trusting(test_ca), ttl=0) as cache:
        assert cache.fetch(asked).url == tls.url("/CHECKSUM")

    assert [e.status for e in tls.log("/CHECKSUM")] == [304, 200]


# Reused blobs are checked


def corrupt(blob: Path, *, truncate: bool) -> None:
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    if truncate:
        del data[len(data) // 2 :]
    else:
        data[len(data) // 3] ^= 0x01
    blob.write_bytes(bytes(data))
    blob.chmod(0o444)


@pytest.mark.parametrize("truncate", [False, True], ids=["bit-flip", "truncated"])
def test_import_of_a_stored_digest_replaces_a_corrupt_blob(
    store: Store, tmp_path: Path, image_bytes: bytes, truncate: bool
) -> None:
    disk = tmp_path / "mine.qcow2"
    disk.write_bytes(image_bytes)
    first = store.import_file(disk, "mine:1")
    corrupt(first.path, truncate=truncate)

    again = store.import_file(disk, "mine:2")

    assert again.disk.size == len(image_bytes)
    assert again.path.read_bytes() == image_bytes
    assert misnamed_blobs(store) == []
    assert_consistent(store)
    figures.add("corrupt stored blobs healed by a reuse")


def test_a_pull_fetches_again_instead_of_reusing_a_corrupt_blob(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    recipe = imagekit.load_recipe(upstream.recipe(FILENAME))
    first = store.pull(recipe)
    corrupt(first.path, truncate=False)

    with pytest.raises(imagekit.StoreError, match=r"damaged.*imagekit fsck"):
        store.pull(recipe, tag="offline:1", offline=True)
    again = store.pull(recipe, tag="again:1")

    assert again.disk_digest == first.disk_digest
    assert again.path.read_bytes() == image_bytes
    assert image_gets(upstream.server) == 2
    assert_consistent(store)
    figures.add("corrupt stored blobs healed by a reuse")
