"""End-to-end pulls through the public API against a real loopback server, gpgv and qemu-img."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imagekit
from imagekit.store import Store
from tests.conftest import REPO, Upstream, cached_bytes, make_qcow2
from tests.gpgtools import TestKey, detach_sign
from tests.httpserver import LoopbackServer

FILENAME = "Test-Cloud-Base-Generic-1-1.2.x86_64.qcow2"


def blob_names(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir())


def owner_can_write(path: Path) -> bool:
    """Whether the file's owner may open it for writing, by its mode alone.

    root passes every permission check (CAP_DAC_OVERRIDE), so as root the probe runs in a child
    stripped of all capabilities: the same uid, held to the mode bits like any owner.
    """
    if os.geteuid() != 0:
        return os.access(path, os.W_OK)
    probe = "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY))"
    no_caps = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    done = subprocess.run(
        [*no_caps, sys.executable, "-c", probe, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0 or "PermissionError" in done.stderr, done.stderr
    return done.returncode == 0


def image_requests(server: LoopbackServer, filename: str = FILENAME) -> int:
    return len([e for e in server.log(f"/pub/{filename}") if e.method == "GET"])


def test_signed_pull_stores_image_with_provenance(
    store: Store, upstream: Upstream, image_bytes: bytes, signing_key: TestKey
) -> None:
    upstream.publish(FILENAME, image_bytes)
    recipe = imagekit.load_recipe(upstream.recipe(FILENAME))

    image = store.pull(recipe)

    digest = "sha256:" + hashlib.sha256(image_bytes).hexdigest()
    assert image.ref == "test-cloud:1"
    assert image.disk_digest == digest
    assert image.path.read_bytes() == image_bytes
    assert not owner_can_write(image.path)
    assert image.path.stat().st_mode & 0o222 == 0
    assert image.verification == "signed"
    config = image.provenance
    assert config["verification"]["signer"] == signing_key.fingerprint
    assert config["recipe"]["text"] == recipe.text
    assert config["source"]["url"].endswith(FILENAME)
    assert config["disk"]["virtual-size"] == 4 << 20
    assert config["disk"]["format"] == "qcow2"
    # The checksum file is kept as evidence, byte for byte, so it can be re-checked later.
    evidence = store.read_blob(config["verification"]["checksum_file"])
    assert evidence.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    assert store.fsck().ok


def test_second_pull_is_a_cache_hit_without_network(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    recipe = imagekit.load_recipe(upstream.recipe(FILENAME))
    first = store.pull(recipe)
    upstream.server.clear_log()

    second = store.pull(recipe)

    assert second.cached and not first.cached
    assert second.digest == first.digest
    assert upstream.server.log() == []


def test_same_file_name_with_other_bytes_is_another_image(
    store: Store, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    first = store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)))
    other = make_qcow2(tmp_path / "other.qcow2", seed=2)
    upstream.publish(FILENAME, other)

    second = store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)), refresh=True)

    assert second.disk_digest != first.disk_digest
    assert second.path.read_bytes() == other
    assert store.has_blob(first.disk_digest)


def test_detached_signature_like_ubuntu(
    store: Store, upstream: Upstream, image_bytes: bytes, signing_key: TestKey
) -> None:
    sums = f"{hashlib.sha256(image_bytes).hexdigest()} *{FILENAME}\n".encode()
    upstream.server.add(f"/pub/{FILENAME}", image_bytes)
    upstream.server.add("/pub/SHA256SUMS", sums)
    upstream.server.add("/pub/SHA256SUMS.gpg", detach_sign(signing_key, sums))
    key = upstream.directory / "key.asc"
    key.write_bytes(signing_key.public_key.read_bytes())
    root = upstream.server.url("/pub/")
    recipe = imagekit.load_recipe_string(
        f'name = "ubuntu-like"\nversion = "24.04"\n[source]\nurl = "{root}{FILENAME}"\n'
        f'checksum_url = "{root}SHA256SUMS"\nsignature_url = "{root}SHA256SUMS.gpg"\n'
        'keys = ["key.asc"]\n',
        base_dir=upstream.directory,
    )

    image = store.pull(recipe)

    assert image.verification == "signed"
    assert image.provenance["verification"]["signer"] == signing_key.fingerprint
    assert image.provenance["verification"]["signature"] is not None


def test_pinned_digest_without_checksum_file(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    digest = hashlib.sha256(image_bytes).hexdigest()
    path = upstream.recipe(FILENAME, checksum=False, extra=f'sha256 = "{digest}"\n')

    image = store.pull(imagekit.load_recipe(path))

    assert image.verification == "pinned"


def test_insecure_recipe_is_recorded_unverified(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    path = upstream.recipe(FILENAME, checksum=False, extra="insecure = true\n")

    image = store.pull(imagekit.load_recipe(path))

    assert image.verification == "unverified"


def test_no_signature_and_no_pin_is_refused(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    path = upstream.recipe(FILENAME, checksum=False)

    with pytest.raises(imagekit.SignatureError, match="nothing vouches"):
        store.pull(imagekit.load_recipe(path))
    assert blob_names(store) == []
    assert image_requests(upstream.server) == 0


def test_mirror_rewrites_the_recipe_base(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    path = upstream.recipe(FILENAME, base="https://download.example.invalid/pub/")

    image = store.pull(imagekit.load_recipe(path), mirror=upstream.server.url("/pub"))

    assert image.verification == "signed"
    assert image.provenance["source"]["url"].startswith("https://download.example.invalid/")
    assert image.provenance["source"]["fetched_from"] == upstream.server.url(f"/pub/{FILENAME}")


def test_tampered_bytes_are_refused_and_nothing_stored(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    tampered = bytearray(image_bytes)
    tampered[-100] ^= 0x01
    upstream.server.add(f"/pub/{FILENAME}", bytes(tampered))

    with pytest.raises(imagekit.ChecksumError, match="tampered"):
        store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)))
    assert blob_names(store) == []
    assert store.refs() == []
    assert not list(store.tmp_dir.glob("*.part"))


def test_wrong_key_is_refused_before_download(
    store: Store, upstream: Upstream, image_bytes: bytes, other_key: TestKey
) -> None:
    upstream.publish(FILENAME, image_bytes)

    with pytest.raises(imagekit.SignatureError):
        store.pull(imagekit.load_recipe(upstream.recipe(FILENAME, key=other_key)))
    assert blob_names(store) == []
    assert image_requests(upstream.server) == 0


def test_unsigned_checksum_file_with_pinned_keys_is_refused(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes, signed=False)

    with pytest.raises(imagekit.SignatureError, match="not signed"):
        store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)))
    assert blob_names(store) == []


def test_forged_lines_outside_the_signed_block_do_not_count(
    store: Store, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    evil = make_qcow2(tmp_path / "evil.qcow2", seed=66)
    evil_digest = hashlib.sha256(evil).hexdigest()
    forged = f"SHA256 (evil.qcow2) = {evil_digest}\n"
    # A signed CHECKSUM for the real image, with a forged entry appended after the signature.
    upstream.publish(FILENAME, image_bytes, extra_after=forged, extra_before=forged)
    upstream.server.add("/pub/evil.qcow2", evil)

    with pytest.raises(imagekit.ChecksumError, match=r"evil\.qcow2"):
        store.pull(imagekit.load_recipe(upstream.recipe("evil.qcow2")))
    assert blob_names(store) == []
    # The real image still verifies from the same file.
    assert store.pull(imagekit.load_recipe(upstream.recipe(FILENAME))).verification == "signed"


@pytest.mark.parametrize("kind", ["backing-file", "data-file"])
def test_qcow2_pointing_outside_itself_is_refused(
    store: Store, upstream: Upstream, tmp_path: Path, kind: str
) -> None:
    hostile = tmp_path / "hostile.qcow2"
    if kind == "backing-file":
        options = ["-F", "raw", "-b", "/etc/shadow"]
    else:
        options = ["-o", f"data_file={tmp_path / 'data.raw'}"]
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-u", *options, str(hostile), "64M"],
        check=True,
        capture_output=True,
    )
    upstream.publish("hostile.qcow2", hostile.read_bytes())

    with pytest.raises(imagekit.UnsafeImageError):
        store.pull(imagekit.load_recipe(upstream.recipe("hostile.qcow2")))
    assert blob_names(store) == []
    assert not list(store.tmp_dir.glob("*.part"))


def test_fsck_finds_a_flipped_bit(store: Store, upstream: Upstream, image_bytes: bytes) -> None:
    upstream.publish(FILENAME, image_bytes)
    image = store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)))
    assert store.fsck().ok
    path = image.path
    path.chmod(0o644)
    with path.open("r+b") as disk:
        disk.seek(12345)
        byte = disk.read(1)
        disk.seek(12345)
        disk.write(bytes([byte[0] ^ 0x10]))
    path.chmod(0o444)

    report = store.fsck()

    assert not report.ok
    assert any(image.disk_digest.split(":")[1] in problem for problem in report.problems)


def test_remove_then_gc_frees_the_blobs(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    image = store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)))

    store.remove(image.ref or "")
    report = store.gc()

    assert image.disk_digest in report.removed_blobs
    assert blob_names(store) == []
    assert store.fsck().ok


def test_import_local_file_is_unverified(store: Store, tmp_path: Path) -> None:
    disk = tmp_path / "mine.img"
    make_qcow2(disk, seed=5)

    image = store.import_file(disk, "mine:1")

    assert image.verification == "unverified"
    assert image.provenance["source"] == {"kind": "local", "path": str(disk)}
    assert image.path.read_bytes() == disk.read_bytes()


def test_file_url_recipe(store: Store, tmp_path: Path, image_bytes: bytes) -> None:
    disk = tmp_path / "local.qcow2"
    disk.write_bytes(image_bytes)
    digest = hashlib.sha256(image_bytes).hexdigest()
    recipe = imagekit.load_recipe_string(
        f'name = "local"\nversion = "1"\n[source]\nurl = "{disk.as_uri()}"\nsha256 = "{digest}"\n'
    )

    assert store.pull(recipe).verification == "pinned"


def _pull_in_child(store_root: str, recipe_path: str, connections: int | None = None) -> str:
    store = imagekit.open_store(store_root)
    network = {} if connections is None else {"connections": connections}
    return store.pull(imagekit.load_recipe(recipe_path), **network).disk_digest


def test_concurrent_pulls_download_once(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:
    upstream.publish(FILENAME, image_bytes)
    upstream.server.throttle(f"/pub/{FILENAME}", 8 << 20)  # ~0.5 s: the pulls overlap
    recipe = upstream.recipe(FILENAME)
    context = multiprocessing.get_context("spawn")

    with context.Pool(4) as pool:
        digests = pool.starmap(_pull_in_child, [(str(store.root), str(recipe))] * 4)

    assert len(set(digests)) == 1
    assert image_requests(upstream.server) == 1
    assert store.fsck().ok


def test_kill_9_mid_download_resumes_with_only_the_rest(
    store: Store, upstream: Upstream, tmp_path: Path
) -> None:
    big = make_qcow2(tmp_path / "big.qcow2", size=24 << 20, seed=9)
    upstream.publish(FILENAME, big)
    upstream.server.throttle(f"/pub/{FILENAME}", 6 << 20)
    recipe = upstream.recipe(FILENAME)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # one stream: reliability/test_segment_kills.py kills segmented downloads
            "import sys; from tests.test_pull import _pull_in_child; "
            "_pull_in_child(sys.argv[1], sys.argv[2], connections=1)",
            str(store.root),
            str(recipe),
        ],
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    partial = 0
    while time.monotonic() < deadline and partial < 6 << 20:
        partial = sum(p.stat().st_size for p in store.tmp_dir.glob("*.part"))
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = sum(p.stat().st_size for p in store.tmp_dir.glob("*.part"))
    assert 0 < partial < len(big)
    upstream.server.throttle(f"/pub/{FILENAME}", None)
    upstream.server.clear_log()

    image = store.pull(imagekit.load_recipe(recipe), connections=1)

    assert image.path.read_bytes() == big
    resumed = upstream.server.log(f"/pub/{FILENAME}")
    assert [e.range for e in resumed] == [f"bytes={partial}-"]
    assert upstream.server.sent(f"/pub/{FILENAME}") == len(big) - partial
    assert store.fsck().ok


@pytest.mark.parametrize("connections", [1, 4])
def test_a_large_download_leaves_only_its_tail_in_the_page_cache(
    store: Store, upstream: Upstream, tmp_path: Path, connections: int
) -> None:
    """Written back and dropped every 32 MiB as it arrives, over one stream or segments."""
    big = make_qcow2(tmp_path / "big.qcow2", size=40 << 20, seed=12)
    upstream.publish(FILENAME, big)
    image = store.pull(imagekit.load_recipe(upstream.recipe(FILENAME)), connections=connections)
    assert cached_bytes(image.path) <= len(big) - (30 << 20)  # the first 32 MiB are dropped
    assert image.path.read_bytes() == big


def test_offline_pull_uses_cached_evidence_and_stored_bytes_only(
    store: Store, upstream: Upstream, image_bytes: bytes
) -> None:

    upstream.publish(FILENAME, image_bytes)
    recipe = imagekit.load_recipe(upstream.recipe(FILENAME))
    first = store.pull(recipe)
    upstream.server.clear_log()

    again = store.pull(recipe, tag="copy:1", offline=True)

    assert upstream.server.log() == []
    assert again.disk_digest == first.disk_digest and again.verification == "signed"
    assert again.manifest["annotations"]["org.imagekit.source.filename"] == FILENAME
