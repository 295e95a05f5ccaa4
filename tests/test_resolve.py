"""Resolution from real upstream metadata, the metadata cache, pins and the resolve schema."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagekit
from imagekit.net.metadata import UpstreamCache
from imagekit.net.transport import Transport
from imagekit.recipe import HttpSource, load_recipe, load_recipe_string
from imagekit.resolve.resolve import Target, resolve
from imagekit.store import Store
from imagekit.verify.policy import checksum_transport
from tests import mirrors
from tests.conftest import REAL, REPO, make_qcow2
from tests.gpgtools import TestKey
from tests.httpserver import LoopbackServer

RECIPES = REPO / "recipes"
STREAM9 = "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2"
STREAM9_DIR = "/centos/9-stream/x86_64/images/"


def resolved(recipe: imagekit.Recipe, tmp_path: Path, mirror: str | None = None) -> Target:
    with UpstreamCache(tmp_path / "cache", Transport(retries=0)) as cache:
        return resolve(recipe, cache=cache, mirror=mirror)


def upstream_text(name: str, server: LoopbackServer) -> str:
    """A bundled recipe with its upstream hosts moved onto the loopback server."""
    text = (RECIPES / f"{name}.toml").read_text()
    return text.replace("https://fedoraproject.org/", server.url("/fp/")).replace(
        "https://download.fedoraproject.org/pub/fedora/linux/", server.url("/pub/fedora/linux/")
    )


def centos_mirror(server: LoopbackServer, data: bytes) -> str:
    text = (REAL / "centos-stream9-x86_64-CHECKSUM").read_text()
    mirrors.checksum_dir(server, STREAM9_DIR, text, STREAM9, data)
    return server.url("/centos/")


# Real upstream files, unmodified


@pytest.mark.parametrize(
    ("target", "real", "where", "filename", "digest"),
    [
        (
            "centos-stream:9",
            "centos-stream9-x86_64-CHECKSUM",
            "/m/9-stream/x86_64/images/CHECKSUM",
            STREAM9,
            "bcebdc00511d6e18782732570056cfbc7cba318302748bfc8f66be9c0db68142",
        ),
        (
            "centos-stream:latest",
            "centos-stream10-x86_64-CHECKSUM",
            "/m/10-stream/x86_64/images/CHECKSUM",
            "CentOS-Stream-GenericCloud-10-20241118.0.x86_64.qcow2",
            "3cb1310f39d92d34d0ea62c1d6f8943f47dce9df6937adb5bd26af8efa5d921d",
        ),
        (
            "almalinux:9",
            "almalinux9-x86_64-CHECKSUM",
            "/m/9/cloud/x86_64/images/CHECKSUM",
            "AlmaLinux-9-GenericCloud-9.8-20260526.x86_64.qcow2",
            "c397eed7023e92c841155831b1f47e26300e5bef0f0256c129322307c897a251",
        ),
        (
            "ubuntu:24.04",
            "ubuntu-24.04-SHA256SUMS",
            "/m/releases/noble/release/SHA256SUMS",
            "ubuntu-24.04-server-cloudimg-amd64.img",
            "d1940f7d69d343355e183dff1e08a59852d32e7309baa7a4bad8365b11b005ac",
        ),
    ],
)
def test_real_listings_resolve_to_the_dated_file(
    target: str,
    real: str,
    where: str,
    filename: str,
    digest: str,
    server: LoopbackServer,
    tmp_path: Path,
) -> None:
    server.add(where, (REAL / real).read_bytes())

    found = resolved(load_recipe(target, arch="x86_64"), tmp_path, server.url("/m/"))

    assert found.resolution is not None
    assert found.source.filename == filename
    assert found.resolution.digests["sha256"] == digest
    assert "latest" not in found.source.url
    assert found.resolution.metadata == (server.url(where),)


def test_ubuntu_serial_and_debian_build_come_from_their_metadata(
    server: LoopbackServer, tmp_path: Path
) -> None:
    server.add(
        "/m/releases/noble/release/SHA256SUMS", (REAL / "ubuntu-24.04-SHA256SUMS").read_bytes()
    )
    document = (REAL / "debian-12-genericcloud-amd64.json").read_bytes()
    server.add("/m/bookworm/latest/debian-12-genericcloud-amd64.json", document)

    ubuntu = resolved(load_recipe("ubuntu:24.04", arch="x86_64"), tmp_path, server.url("/m/"))
    debian = resolved(load_recipe("debian:12", arch="x86_64"), tmp_path, server.url("/m/"))

    assert ubuntu.source.url == (
        "https://cloud-images.ubuntu.com/releases/noble/release-20260725/"
        "ubuntu-24.04-server-cloudimg-amd64.img"
    )
    assert ubuntu.source.signature_url is not None
    assert ubuntu.source.signature_url.endswith("release-20260725/SHA256SUMS.gpg")
    assert debian.source.url == (
        "https://cloud.debian.org/images/cloud/bookworm/20250210-2019/"
        "debian-12-genericcloud-amd64-20250210-2019.qcow2"
    )
    assert debian.source.checksum_url == (
        "https://cloud.debian.org/images/cloud/bookworm/20250210-2019/SHA512SUMS"
    )
    encoded = (
        "pY2GUl11/Y4TmiMCUxzl0qt17wJzz+ePnVOq2ksj79RfhDO0gG+kVwz+mByPrib15ehVy9ZrohmIYvKBJf0tRQ"
    )
    assert debian.resolution is not None
    assert debian.resolution.digests == {"sha512": base64.b64decode(encoded + "==").hex()}


@pytest.mark.parametrize("name", ["fedora-server", "fedora-cloud"])
def test_fedora_releases_json_latest_is_the_newest_stable_release_with_a_key(
    name: str, server: LoopbackServer, tmp_path: Path
) -> None:
    server.add("/fp/releases.json", (REAL / "fedora-releases.json").read_bytes())
    text = upstream_text(name, server)

    found = resolved(load_recipe_string(text, base_dir=RECIPES, arch="x86_64"), tmp_path)

    # The file lists 39 (no key pinned: not offered), 40, and "41 Beta" (not a release).
    assert found.resolution is not None and found.resolution.release == "40"
    assert found.source.keys == (RECIPES / "keys" / "RPM-GPG-KEY-fedora-40-primary",)
    assert found.source.fingerprints == ("115DF9AEF857853EE8445D0A0727707EA15B79CC",)
    expected = {
        "fedora-server": ("Fedora-Server-KVM-40-1.14.x86_64.qcow2", "a16ba1f26aaf010f62bd94e9f7"),
        "fedora-cloud": ("Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2", "ac58f3c35b73272d5986"),
    }[name]
    assert found.source.filename == expected[0]
    assert found.resolution.digests["sha256"].startswith(expected[1])
    variant = "Server" if name == "fedora-server" else "Cloud"
    assert found.source.checksum_url == (
        f"{server.url('/pub/fedora/linux/')}releases/40/{variant}/x86_64/images/"
        f"Fedora-{variant}-40-1.14-x86_64-CHECKSUM"
    )
    # 39 is no release of the recipe's (no key pinned): refused when loading, listing the recipe's.
    with pytest.raises(
        imagekit.RecipeError, match=r"no version '39'; known versions: 40, 41, .*47, "
    ):
        resolved(load_recipe_string(text, base_dir=RECIPES, version="39"), tmp_path)
    with pytest.raises(imagekit.RecipeError, match="41 is not published for x86_64"):
        resolved(load_recipe_string(text, base_dir=RECIPES, version="41"), tmp_path)


def test_fedora_releases_json_with_newer_releases(server: LoopbackServer, tmp_path: Path) -> None:
    mirrors.fedora_releases_json(
        server, "/fp/releases.json", {"41": "1.4", "42": "1.1", "44": "1.7"}
    )
    server_text, cloud_text = (upstream_text(n, server) for n in ("fedora-server", "fedora-cloud"))

    latest = resolved(load_recipe_string(server_text, base_dir=RECIPES, arch="aarch64"), tmp_path)
    kvm = resolved(load_recipe_string(server_text, base_dir=RECIPES, version="41"), tmp_path)
    cloud = resolved(load_recipe_string(cloud_text, base_dir=RECIPES, version="42"), tmp_path)

    assert latest.source.filename == "Fedora-Server-Guest-Generic-44-1.7.aarch64.qcow2"
    assert latest.source.keys == (RECIPES / "keys" / "RPM-GPG-KEY-fedora-44-primary",)
    assert kvm.source.filename.startswith("Fedora-Server-KVM-41-1.4.")
    assert cloud.source.filename.startswith("Fedora-Cloud-Base-Generic-42-1.1.")
    with pytest.raises(imagekit.RecipeError, match=r"43 is not published.*40, 41, 42, 44, latest"):
        resolved(load_recipe_string(cloud_text, base_dir=RECIPES, version="43"), tmp_path)


def test_behind_a_mirror_upstream_is_never_asked(
    server: LoopbackServer, image_bytes: bytes, signing_key: TestKey, tmp_path: Path
) -> None:
    with LoopbackServer() as upstream:
        upstream.add("/fp/releases.json", (REAL / "fedora-releases.json").read_bytes())
        text = upstream_text("fedora-server", upstream)
        mirrors.fedora(
            server, "/fedora/", variant="Server", arch="x86_64", data=image_bytes, key=signing_key
        )

        found = resolved(
            load_recipe_string(text, base_dir=RECIPES, arch="x86_64"),
            tmp_path,
            server.url("/fedora/"),
        )

        assert upstream.log() == []
    assert found.resolution is not None and found.resolution.release == "44"
    assert found.resolution.metadata == (
        server.url("/fedora/releases/"),
        server.url("/fedora/releases/44/Server/x86_64/images/"),
    )


def test_unknown_version_and_arch_say_what_exists(
    server: LoopbackServer, image_bytes: bytes, tmp_path: Path
) -> None:
    mirror = centos_mirror(server, image_bytes)

    with pytest.raises(imagekit.RecipeError, match="no version '8'; known versions: 9, 10, latest"):
        resolved(load_recipe("centos-stream:8", arch="x86_64"), tmp_path, mirror)
    with pytest.raises(imagekit.RecipeError, match="no image for s390x; choose --arch aarch64 or"):
        resolved(load_recipe("centos-stream:9", arch="s390x"), tmp_path, mirror)


# The metadata cache


def test_second_pull_within_the_ttl_asks_nothing(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    mirror = centos_mirror(server, image_bytes)
    recipe = load_recipe("centos-stream:9", arch="x86_64")
    first = store.pull(recipe, mirror=mirror, allow_loopback_http=True)
    server.clear_log()

    second = store.pull(recipe, mirror=mirror, allow_loopback_http=True)

    assert second.cached and second.digest == first.digest
    assert server.log() == []


def test_stale_metadata_is_revalidated_with_its_validators(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    mirror = centos_mirror(server, image_bytes)
    recipe = load_recipe("centos-stream:9", arch="x86_64")
    store.pull(recipe, mirror=mirror, allow_loopback_http=True)
    (first,) = server.log(STREAM9_DIR + "CHECKSUM")
    server.clear_log()

    again = store.pull(recipe, mirror=mirror, allow_loopback_http=True, metadata_ttl=0)

    assert again.cached  # same file resolved: the ref still holds, no image request
    (request,) = server.log()
    assert request.path == STREAM9_DIR + "CHECKSUM"
    assert request.headers["If-None-Match"].startswith('"')
    assert "If-Modified-Since" in request.headers
    assert first.status == 200 and "If-None-Match" not in first.headers


class _Conditional(http.server.BaseHTTPRequestHandler):
    """Answers If-None-Match with 304, as real mirrors do (the test server always sends 200)."""

    body = b"SHA256 (x) = " + b"a" * 64 + b"\n"
    requests: list[dict[str, str]] = []  # noqa: RUF012

    def do_GET(self) -> None:
        type(self).requests.append(dict(self.headers))
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def conditional() -> Iterator[str]:
    _Conditional.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Conditional)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/CHECKSUM"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_not_modified_keeps_the_cached_body(conditional: str, tmp_path: Path) -> None:
    transport = Transport(retries=0)
    with UpstreamCache(tmp_path / "cache", transport) as cache:
        first = cache.get(conditional)
    with UpstreamCache(tmp_path / "cache", transport, ttl=0) as cache:
        second = cache.get(conditional)
        assert cache.get(conditional) == second  # once per pull, however often asked
    with UpstreamCache(tmp_path / "cache", transport, offline=True) as cache:
        third = cache.get(conditional)

    assert first == second == third == _Conditional.body
    assert [r.get("If-None-Match") for r in _Conditional.requests] == [None, '"v1"']


def test_offline_uses_the_cache_and_the_store_only(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    mirror = centos_mirror(server, image_bytes)
    recipe = load_recipe("centos-stream:9", arch="x86_64")
    with pytest.raises(imagekit.FetchError, match=r"offline, and .* was never fetched"):
        store.pull(recipe, mirror=mirror, offline=True, allow_loopback_http=True)
    first = store.pull(recipe, mirror=mirror, allow_loopback_http=True)
    server.clear_log()

    again = store.pull(
        recipe, mirror=mirror, tag="stream:9", offline=True, allow_loopback_http=True
    )

    assert again.disk_digest == first.disk_digest and not again.cached
    assert server.log() == []
    store.remove("centos-stream:9")
    store.remove("stream:9")
    store.gc()
    with pytest.raises(imagekit.FetchError, match="not in the store yet"):
        store.pull(recipe, mirror=mirror, offline=True, allow_loopback_http=True)


# Versions that move, and pins that do not


def test_latest_compose_moves_on_and_a_pin_stays(
    store: Store, server: LoopbackServer, image_bytes: bytes, tmp_path: Path
) -> None:
    mirror = centos_mirror(server, image_bytes)
    recipe = load_recipe("centos-stream:9", arch="x86_64")
    old = store.pull(recipe, mirror=mirror, allow_loopback_http=True)
    newer = make_qcow2(tmp_path / "newer.qcow2", seed=7)
    newer_name = "CentOS-Stream-GenericCloud-9-20260101.0.x86_64.qcow2"
    real = (REAL / "centos-stream9-x86_64-CHECKSUM").read_text()
    text = mirrors.substitute_image(real, STREAM9, image_bytes)
    digest = hashlib.sha256(newer).hexdigest()
    text += f"\nSHA256 ({newer_name}) = {digest}\n"  # the real file ends without a newline
    server.replace(STREAM9_DIR + "CHECKSUM", text.encode())
    server.add(STREAM9_DIR + newer_name, newer)

    cached = store.pull(recipe, mirror=mirror, allow_loopback_http=True)
    moved = store.pull(recipe, mirror=mirror, allow_loopback_http=True, refresh=True)
    pinned = store.pull(
        load_recipe(f"centos-stream:9@{old.disk_digest}", arch="x86_64"),
        mirror=mirror,
        allow_loopback_http=True,
        tag="stream:pinned",
    )

    assert cached.cached and cached.disk_digest == old.disk_digest  # within the TTL
    assert moved.path.read_bytes() == newer
    assert moved.provenance["source"]["resolved"]["compose"] == "20260101.0"
    assert store.image("centos-stream:9").digest == moved.digest
    assert pinned.disk_digest == old.disk_digest
    assert pinned.provenance["source"]["filename"] == STREAM9
    assert pinned.verification == "pinned"  # stronger than the recipe's checksum-over-tls
    assert pinned.provenance["recipe"]["pin"] == old.disk_digest
    gone = "sha256:" + "0" * 64
    with pytest.raises(imagekit.ChecksumError, match="no longer offers the image sha256:0000"):
        store.pull(
            load_recipe(f"centos-stream:9@{gone}", arch="x86_64"),
            mirror=mirror,
            allow_loopback_http=True,
        )


def test_keys_override_is_part_of_the_identity(
    store: Store,
    server: LoopbackServer,
    image_bytes: bytes,
    signing_key: TestKey,
) -> None:
    mirrors.fedora(
        server,
        "/f/",
        variant="Cloud",
        arch="x86_64",
        data=image_bytes,
        key=signing_key,
        releases={"44": "1.7"},
    )
    recipe = load_recipe("fedora-cloud", arch="x86_64")
    override = (signing_key.public_key,)
    pulled = store.pull(recipe, mirror=server.url("/f/"), keys_override=override)
    assert pulled.verification == "signed"

    # Without the override the real F44 key is pinned again: no cache hit on the test signature.
    with pytest.raises(imagekit.SignatureError, match=signing_key.fingerprint):
        store.pull(recipe, mirror=server.url("/f/"))


def test_sha512_only_images_are_found_in_the_store_by_that_digest(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    image = mirrors.debian(
        server, "/d/", release="12", codename="bookworm", debian_arch="amd64", data=image_bytes
    )
    recipe = load_recipe("debian:12", arch="x86_64")
    store.pull(recipe, mirror=server.url("/d/"), allow_loopback_http=True)
    asked = len(server.log(image))  # the image, and (its size unknown) a one-byte Range probe

    store.pull(recipe, mirror=server.url("/d/"), allow_loopback_http=True, tag="d:12")

    assert asked and len(server.log(image)) == asked


# checksum-over-tls


def test_checksum_over_tls_refuses_plain_http(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    mirror = centos_mirror(server, image_bytes)

    with pytest.raises(imagekit.VerificationError, match="did not come over TLS"):
        store.pull(load_recipe("centos-stream:9", arch="x86_64"), mirror=mirror)
    assert server.log(STREAM9_DIR + STREAM9) == []


def test_checksum_transport() -> None:
    assert checksum_transport("https://cloud.centos.org/CHECKSUM") == "https"
    assert checksum_transport("http://127.0.0.1:8000/CHECKSUM") is None
    assert checksum_transport("http://localhost/C", allow_loopback_http=True) == "http-loopback"
    assert checksum_transport("http://10.0.0.1/C", allow_loopback_http=True) is None
    assert checksum_transport("file:///srv/CHECKSUM", allow_loopback_http=True) is None


# The [resolve] schema

GOOD = """
name = "stream"
version = "latest"
[source]
kind = "http"
level = "checksum-over-tls"
mirror_root = "https://example.org/"
url = "https://example.org/{release}/{filename}"
checksum_url = "https://example.org/{release}/CHECKSUM"
[resolve]
resolver = "checksum-listing"
image = 'img-{release}-(?P<compose>[0-9]{8})\\.qcow2'
releases = ["9"]
"""


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('resolver = "checksum-listing"', 'resolver = "guess"', "unknown resolver 'guess'"),
        ('releases = ["9"]', 'releases = ["9"]\nimages = "x"', r"unknown key\(s\) images"),
        ('releases = ["9"]', 'releases = ["9"]\nmetadata_url = "x"', "does not use metadata_url"),
        ("{release}/{filename}", "{version}/{filename}", "cannot use {version}"),
        ("{release}/CHECKSUM", "{compose}/CHECKSUM", "uses {compose}, not known there"),
        ("(?P<compose>[0-9]{8})", "{filename}", "may only use"),
        ("(?P<compose>[0-9]{8})", "([0-9]", "invalid regex"),
        ('releases = ["9"]', 'releases = { "9" = { codename = "x" } }', "codename are unused"),
        ('mirror_root = "https://example.org/"', 'mirror_root = "https://other.org/"', "mirror_r"),
        ('checksum_url = "https://example.org/{release}/CHECKSUM"\n', "", "needs checksum_url"),
        ('level = "checksum-over-tls"', 'level = "signed"', "needs keys"),
        ('level = "checksum-over-tls"', 'level = "sure"', "level must be one of"),
        ('level = "checksum-over-tls"\n', "", "checksum_url without keys proves nothing"),
    ],
)
def test_resolve_schema_errors(old: str, new: str, error: str) -> None:
    assert old in GOOD
    load_recipe_string(GOOD)
    with pytest.raises(imagekit.RecipeError, match=error):
        load_recipe_string(GOOD.replace(old, new))


def test_fingerprints_per_release_need_a_key_file_for_each(tmp_path: Path) -> None:
    text = (RECIPES / "fedora-cloud.toml").read_text()
    (tmp_path / "keys").mkdir()
    for release in ("40", "41"):
        key = RECIPES / "keys" / f"RPM-GPG-KEY-fedora-{release}-primary"
        (tmp_path / "keys" / key.name).write_bytes(key.read_bytes())

    with pytest.raises(imagekit.RecipeError, match="RPM-GPG-KEY-fedora-42-primary' does not exist"):
        load_recipe_string(text, base_dir=tmp_path)
    plain = (
        'name = "x"\nversion = "1"\n[source]\nurl = "https://example.org/x.qcow2"\n'
        'checksum_url = "https://example.org/CHECKSUM"\n'
        'keys = ["keys/RPM-GPG-KEY-fedora-{release}-primary"]\n'
        '[source.fingerprints]\n"40" = "115DF9AEF857853EE8445D0A0727707EA15B79CC"\n'
    )
    with pytest.raises(imagekit.RecipeError, match=r"fingerprints per release need a \[resolve\]"):
        load_recipe_string(plain, base_dir=RECIPES)
    (tmp_path / "root").mkdir()
    scratch = 'name = "s"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "root"\n'
    with pytest.raises(imagekit.RecipeError, match="a @sha256 pin applies to downloaded images"):
        load_recipe_string(scratch, base_dir=tmp_path, pin="sha256:" + "a" * 64)


def test_the_documented_resolving_example_loads() -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    block = next(b for b in text.split("```toml\n")[1:] if 'name = "stream-dev"' in b)
    source = load_recipe_string(block.split("```")[0]).source
    assert isinstance(source, HttpSource) and source.resolve is not None
