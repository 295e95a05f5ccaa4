"""The CLI is a thin layer: it maps library results to text/JSON and typed errors to exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEYS, REAL, Upstream

FILENAME = "Test-Cloud-Base-Generic-1-1.2.x86_64.qcow2"
F44_KEY = KEYS / "RPM-GPG-KEY-fedora-44-primary"
F44_FINGERPRINT = "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"


def imagekit(*args: str, store: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--store", str(store)] if store else []
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "imagekit", command, *prefix, *rest],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pull_json_then_images_inspect_rm_gc_fsck(
    upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    upstream.publish(FILENAME, image_bytes)
    recipe = upstream.recipe(FILENAME)

    pulled = imagekit("pull", str(recipe), "--json", store=store)
    assert pulled.returncode == 0, pulled.stderr
    result = json.loads(pulled.stdout)
    assert result["ref"] == "test-cloud:1"
    assert result["image"] == "sha256:" + hashlib.sha256(image_bytes).hexdigest()
    assert result["digest"].startswith("sha256:")
    assert Path(result["path"]).read_bytes() == image_bytes
    assert result["verification"] == "signed"
    assert pulled.stderr == ""  # no progress bar in a pipe

    again = json.loads(imagekit("pull", str(recipe), "--json", store=store).stdout)
    assert again["cached"] is True and again["digest"] == result["digest"]

    listed = json.loads(imagekit("images", "--json", store=store).stdout)
    assert [row["ref"] for row in listed] == ["test-cloud:1"]
    inspected = json.loads(imagekit("inspect", "test-cloud:1", "--json", store=store).stdout)
    assert inspected["provenance"]["verification"]["level"] == "signed"
    assert "signed by" in imagekit("inspect", "test-cloud", store=store).stdout
    assert imagekit("fsck", store=store).returncode == 0
    assert imagekit("rm", "test-cloud:1", store=store).returncode == 0
    gc = json.loads(imagekit("gc", "--json", store=store).stdout)
    assert result["image"] in gc["removed_blobs"]


def test_errors_are_one_line_with_documented_exit_codes(
    upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    tampered = bytearray(image_bytes)
    tampered[5000] ^= 1
    upstream.publish(FILENAME, image_bytes)
    upstream.server.add(f"/pub/{FILENAME}", bytes(tampered))

    failed = imagekit("pull", str(upstream.recipe(FILENAME)), store=store)

    assert failed.returncode == 4
    assert failed.stderr.startswith("imagekit: error: ")
    assert len(failed.stderr.strip().splitlines()) == 1
    assert imagekit("inspect", "nothing:here", store=store).returncode == 6
    assert imagekit("pull", "no-such-recipe", store=store).returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1"\n[source]\nurl = "http://h/x"\nsigature_url = "y"\n')
    unknown = imagekit("pull", str(bad), store=store)
    assert unknown.returncode == 2 and "sigature_url" in unknown.stderr


def test_verify_real_fedora_checksum_lists_signed_entries() -> None:
    checksum = REAL / "Fedora-Cloud-44-1.7-aarch64-CHECKSUM"

    listed = imagekit("verify", "--checksum", str(checksum), "--key", str(F44_KEY), "--json")

    assert listed.returncode == 0, listed.stderr
    result = json.loads(listed.stdout)
    assert result["signer"] == F44_FINGERPRINT
    names = {entry["filename"] for entry in result["entries"]}
    assert "Fedora-Cloud-Base-Generic-44-1.7.aarch64.qcow2" in names
    assert all(entry["algorithm"] == "sha256" for entry in result["entries"])
    wrong = imagekit(
        "verify", "--checksum", str(checksum), "--key", str(KEYS / "RPM-GPG-KEY-fedora-43-primary")
    )
    assert wrong.returncode == 4


def test_verify_a_local_file_against_real_ubuntu_sums(tmp_path: Path) -> None:
    sums = REAL / "ubuntu-24.04-SHA256SUMS"
    listed = imagekit(
        "verify",
        "--checksum",
        str(sums),
        "--signature",
        str(sums) + ".gpg",
        "--key",
        str(KEYS / "ubuntu-cloudimage-keyring.asc"),
        "--json",
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["signer"] == "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"
    # A local file whose name is listed but whose bytes are not the published ones.
    name = json.loads(listed.stdout)["entries"][0]["filename"]
    fake = tmp_path / name
    fake.write_bytes(b"not the image")
    mismatch = imagekit(
        "verify",
        str(fake),
        "--checksum",
        str(sums),
        "--signature",
        str(sums) + ".gpg",
        "--key",
        str(KEYS / "ubuntu-cloudimage-keyring.asc"),
    )
    assert mismatch.returncode == 4


def test_import_and_recipes(tmp_path: Path, image_bytes: bytes) -> None:
    store = tmp_path / "store"
    disk = tmp_path / "mine.qcow2"
    disk.write_bytes(image_bytes)

    imported = json.loads(
        imagekit("import", str(disk), "--name", "mine:1", "--json", store=store).stdout
    )

    assert imported["verification"] == "unverified"
    assert imagekit("recipes").returncode == 0
