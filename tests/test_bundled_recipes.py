"""Every bundled recipe, resolved and pulled through a loopback mirror of its upstream's layout.

The mirrors (tests/mirrors.py) serve the real upstream files with the test's image bytes in
place of the real image and checksum files re-signed with a test key, pinned through
``keys_override``. The last tests use the real files and the real pinned keys unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import imagekit
from imagekit.net.metadata import UpstreamCache
from imagekit.net.transport import Transport
from imagekit.recipe import HttpSource, KeyPin, bundled_recipes, load_recipe
from imagekit.resolve.resolve import resolve
from imagekit.store import Store
from imagekit.verify.openpgp import key_fingerprints
from imagekit.verify.policy import verify_checksum_file
from tests import mirrors
from tests.conftest import REAL, REPO
from tests.gpgtools import TestKey
from tests.httpserver import LoopbackServer

BUNDLED = [
    "almalinux",
    "centos-stream",
    "debian",
    "fedora-cloud",
    "fedora-server",
    "rocky",
    "ubuntu",
]
ROOTS = {
    "fedora": "/pub/fedora/linux/",
    "centos-stream": "/centos/",
    "almalinux": "/almalinux/",
    "rocky": "/pub/rocky/",
    "debian": "/images/cloud/",
    "ubuntu": "/ubuntu-cloud-images/",
}
UPSTREAM_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def serve(name: str, server: LoopbackServer, arch: str, data: bytes, key: TestKey) -> str:
    """Publish every release of recipe ``name`` for ``arch``; return the mirror URL."""
    if name.startswith("fedora"):
        variant = "Server" if name == "fedora-server" else "Cloud"
        mirrors.fedora(server, ROOTS["fedora"], variant=variant, arch=arch, data=data, key=key)
        return server.url(ROOTS["fedora"])
    root = ROOTS[name]
    if name == "centos-stream":
        for release, compose in (("9", "20211222.0"), ("10", "20241118.0")):
            text = mirrors.renamed(f"centos-stream{release}-x86_64-CHECKSUM", ("x86_64", arch))
            filename = f"CentOS-Stream-GenericCloud-{release}-{compose}.{arch}.qcow2"
            directory = f"{root}{release}-stream/{arch}/images/"
            mirrors.checksum_dir(server, directory, text, filename, data)
    elif name == "almalinux":
        for release, renames in (
            ("9", []),
            ("10", [("AlmaLinux-9-", "AlmaLinux-10-"), ("-9.8-20260526.", "-10.2-20260526.0.")]),
        ):
            text = mirrors.renamed("almalinux9-x86_64-CHECKSUM", *renames, ("x86_64", arch))
            compose = "9.8-20260526" if release == "9" else "10.2-20260526.0"
            filename = f"AlmaLinux-{release}-GenericCloud-{compose}.{arch}.qcow2"
            directory = f"{root}{release}/cloud/{arch}/images/"
            mirrors.checksum_dir(server, directory, text, filename, data)
    elif name == "rocky":
        for release, compose in (("9", "9.8-20260525.0"), ("10", "10.2-20260525.0")):
            text = mirrors.rocky_checksum(release, compose, arch)
            filename = f"Rocky-{release}-GenericCloud-Base-{compose}.{arch}.qcow2"
            mirrors.checksum_dir(server, f"{root}{release}/images/{arch}/", text, filename, data)
    elif name == "debian":
        for release, codename in (("12", "bookworm"), ("13", "trixie")):
            mirrors.debian(
                server,
                root,
                release=release,
                codename=codename,
                debian_arch=UPSTREAM_ARCH[arch],
                data=data,
            )
    else:
        for release, codename in (("22.04", "jammy"), ("24.04", "noble")):
            mirrors.ubuntu(
                server,
                root,
                release=release,
                codename=codename,
                ubuntu_arch=UPSTREAM_ARCH[arch],
                data=data,
                key=key,
            )
    return server.url(root)


# Installer ISOs and the kickstart build that boots one: covered by tests/test_kickstart.py.
KICKSTART_RECIPES = {"fedora-server-dvd", "fedora-server-netinst", "fedora-server-ks"}


def test_every_bundled_recipe_is_covered_here() -> None:
    found = [
        name
        for name in bundled_recipes()
        if not name.startswith("demo") and name not in KICKSTART_RECIPES
    ]
    assert found == BUNDLED


@cache
def fingerprints_in(files: tuple[Path, ...]) -> frozenset[str]:
    return frozenset(key_fingerprints(list(files)))


@pytest.mark.parametrize("name", BUNDLED)
def test_pinned_fingerprints_are_those_of_the_shipped_keys(name: str) -> None:
    source = load_recipe(name).source
    assert isinstance(source, HttpSource)
    if source.level != "signed":
        assert not source.keys and not source.release_keys
        return
    pins = dict(source.release_keys) or {"any": KeyPin(source.keys, source.fingerprints)}
    for release, pin in pins.items():
        assert pin.fingerprints, release
        assert set(pin.fingerprints) <= fingerprints_in(pin.files), release
        assert all(path.is_relative_to(REPO / "recipes" / "keys") for path in pin.files)


CASES = [
    ("fedora-server", "x86_64", "44", "Fedora-Server-Guest-Generic-44-1.7.x86_64.qcow2"),
    ("fedora-server:41", "aarch64", "41", "Fedora-Server-KVM-41-1.4.aarch64.qcow2"),
    ("fedora-cloud:latest", "aarch64", "44", "Fedora-Cloud-Base-Generic-44-1.7.aarch64.qcow2"),
    ("fedora-cloud:40", "x86_64", "40", "Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2"),
    ("centos-stream:9", "x86_64", "9", "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2"),
    ("centos-stream", "aarch64", "10", "CentOS-Stream-GenericCloud-10-20241118.0.aarch64.qcow2"),
    ("almalinux:9", "x86_64", "9", "AlmaLinux-9-GenericCloud-9.8-20260526.x86_64.qcow2"),
    ("almalinux", "aarch64", "10", "AlmaLinux-10-GenericCloud-10.2-20260526.0.aarch64.qcow2"),
    ("rocky:9", "x86_64", "9", "Rocky-9-GenericCloud-Base-9.8-20260525.0.x86_64.qcow2"),
    ("rocky", "x86_64", "10", "Rocky-10-GenericCloud-Base-10.2-20260525.0.x86_64.qcow2"),
    ("debian:12", "x86_64", "12", "debian-12-genericcloud-amd64-20250210-2019.qcow2"),
    ("debian", "aarch64", "13", "debian-13-genericcloud-arm64-20250210-2019.qcow2"),
    ("ubuntu:22.04", "x86_64", "22.04", "ubuntu-22.04-server-cloudimg-amd64.img"),
    ("ubuntu", "aarch64", "24.04", "ubuntu-24.04-server-cloudimg-arm64.img"),
]


@pytest.mark.parametrize(("target", "arch", "release", "filename"), CASES)
def test_pull_through_a_mirror_of_the_upstream_layout(
    target: str,
    arch: str,
    release: str,
    filename: str,
    store: Store,
    server: LoopbackServer,
    image_bytes: bytes,
    signing_key: TestKey,
) -> None:
    name = target.partition(":")[0]
    root = serve(name, server, arch, image_bytes, signing_key)
    recipe = load_recipe(target, arch=arch)
    assert isinstance(recipe.source, HttpSource)

    image = store.pull(
        recipe, mirror=root, allow_loopback_http=True, keys_override=(signing_key.public_key,)
    )

    assert image.path.read_bytes() == image_bytes
    assert image.ref == recipe.ref
    config = image.provenance
    source, verification = config["source"], config["verification"]
    resolved = source["resolved"]
    assert (resolved["release"], resolved["filename"]) == (release, filename)
    assert source["url"].startswith(recipe.source.mirror_root)
    assert source["url"].endswith("/" + filename)
    assert source["fetched_from"].startswith(root)
    assert resolved["metadata"] and all(url.startswith(root) for url in resolved["metadata"])
    assert image.verification == recipe.source.level
    if recipe.source.level == "signed":
        assert verification["signer"] == signing_key.fingerprint
        assert verification["keys_override"] == [str(signing_key.public_key)]
    else:
        assert verification["checksum_transport"] == "http-loopback"
    annotations = image.manifest["annotations"]
    assert annotations["org.imagekit.source.url"] == source["url"]
    assert annotations["org.imagekit.source.filename"] == filename
    assert annotations["org.imagekit.source.digest"] == image.disk_digest
    # 206: the one-byte Range probe of an image whose size the checksum file does not give
    assert {entry.status for entry in server.log()} <= {200, 206}
    assert store.fsck().ok


def test_fedora_44_real_checksum_verifies_with_the_key_the_recipe_selects(
    store: Store, server: LoopbackServer, image_bytes: bytes, tmp_path: Path
) -> None:
    """No override: the recipe pins the F44 key for release 44 and the real CHECKSUM verifies."""
    real = REAL / "Fedora-Cloud-44-1.7-aarch64-CHECKSUM"
    root = ROOTS["fedora"]
    directory = f"{root}releases/44/Cloud/aarch64/images/"
    filename = "Fedora-Cloud-Base-Generic-44-1.7.aarch64.qcow2"
    server.add(f"{root}releases/", mirrors.listing(["43/", "44/"]))
    server.add(directory, mirrors.listing([real.name, filename]))
    server.add(directory + real.name, real.read_bytes())
    server.add(directory + filename, image_bytes)  # not the real 528 MB image
    recipe = load_recipe("fedora-cloud:44", arch="aarch64")

    with UpstreamCache(tmp_path / "cache", Transport()) as upstream:
        target = resolve(recipe, cache=upstream, mirror=server.url(root))
        assert target.source.keys == (REPO / "recipes/keys/RPM-GPG-KEY-fedora-44-primary",)
        verified = verify_checksum_file(
            upstream.get(server.url(directory + real.name)),
            keys=target.source.keys,
            fingerprints=target.source.fingerprints,
        )
    assert verified.signer == "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"
    # The signed size (528154624 bytes) refuses the fake image as soon as its length is known.
    with pytest.raises(imagekit.FetchError, match="528154624"):
        store.pull(recipe, mirror=server.url(root))
    assert store.refs() == []
    assert not list(store.blobs_dir.iterdir())
    assert not list(store.tmp_dir.glob("*.part"))


def test_fedora_44_checksum_under_release_43_fails_with_the_43_key(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    real = REAL / "Fedora-Cloud-44-1.7-aarch64-CHECKSUM"
    root = ROOTS["fedora"]
    directory = f"{root}releases/43/Cloud/aarch64/images/"
    filename = "Fedora-Cloud-Base-Generic-43-1.6.aarch64.qcow2"
    checksum = "Fedora-Cloud-43-1.6-aarch64-CHECKSUM"
    server.add(f"{root}releases/", mirrors.listing(["43/"]))
    server.add(directory, mirrors.listing([checksum, filename]))
    server.add(directory + checksum, real.read_bytes())
    server.add(directory + filename, image_bytes)

    with pytest.raises(imagekit.SignatureError, match="36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"):
        store.pull(load_recipe("fedora-cloud", arch="aarch64"), mirror=server.url(root))
    assert server.log(directory + filename) == []


def test_ubuntu_real_sums_verify_with_the_pinned_canonical_key(
    store: Store, server: LoopbackServer, image_bytes: bytes
) -> None:
    root = ROOTS["ubuntu"]
    sums = (REAL / "ubuntu-24.04-SHA256SUMS").read_bytes()
    signature = (REAL / "ubuntu-24.04-SHA256SUMS.gpg").read_bytes()
    for directory in ("release", "release-20260725"):
        server.add(f"{root}releases/noble/{directory}/SHA256SUMS", sums)
        server.add(f"{root}releases/noble/{directory}/SHA256SUMS.gpg", signature)
    image = f"{root}releases/noble/release-20260725/ubuntu-24.04-server-cloudimg-amd64.img"
    server.add(image, image_bytes)

    # The signature verifies with the real key; then the fake image fails the signed digest.
    with pytest.raises(imagekit.ChecksumError, match="d1940f7d69d343355e183dff1e08a5985"):
        store.pull(load_recipe("ubuntu:24.04", arch="x86_64"), mirror=server.url(root))
    assert store.refs() == []
    assert not list(store.blobs_dir.iterdir())


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO,
    )


def test_cli_lists_recipes_and_pulls_through_a_mirror_then_offline(
    server: LoopbackServer, image_bytes: bytes, signing_key: TestKey, tmp_path: Path
) -> None:
    env = {"IMAGEKIT_HOME": str(tmp_path / "store"), "IMAGEKIT_RECIPES": ""}
    listed = run("recipes", env=env)
    assert listed.returncode == 0, listed.stderr
    for name in BUNDLED:
        assert name in listed.stdout
    assert re.search(r"^fedora-server +signed +40-47 latest ", listed.stdout, re.MULTILINE)
    rows = {row["name"]: row for row in json.loads(run("recipes", "--json", env=env).stdout)}
    assert rows["debian"]["versions"] == ["12", "13"]
    assert rows["almalinux"]["level"] == "checksum-over-tls"

    root = serve("debian", server, "x86_64", image_bytes, signing_key)
    args = ["debian:12", "--arch", "x86_64", "--mirror", root, "--json"]
    refused = run("pull", *args, env=env)  # plain http, not allowed: no TLS, no proof
    assert refused.returncode == 4, refused.stderr
    assert "did not come over TLS" in refused.stderr
    pulled = run("pull", *args, "--allow-loopback-http", env=env)
    assert pulled.returncode == 0, pulled.stderr
    summary = json.loads(pulled.stdout)
    assert summary["verification"] == "checksum-over-tls"
    assert summary["image"] == "sha256:" + hashlib.sha256(image_bytes).hexdigest()
    server.clear_log()

    offline = run(
        "pull", *args, "--allow-loopback-http", "--offline", "--tag", "debian:bookworm", env=env
    )

    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["image"] == summary["image"]
    assert server.log() == []
    inspected = run("inspect", "debian:bookworm", env=env)
    assert "verification: checksum-over-tls" in inspected.stdout
