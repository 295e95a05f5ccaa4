"""The CLI is a thin layer: it maps library results to text/JSON and typed errors to exit codes."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clirun import imagekit
from tests.conftest import KEYS, REAL, REPO, Upstream, make_qcow2
from tests.reliability import figures

FILENAME = "Test-Cloud-Base-Generic-1-1.2.x86_64.qcow2"
F44_KEY = KEYS / "RPM-GPG-KEY-fedora-44-primary"
F44_FINGERPRINT = "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"


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


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserts there is exactly one)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def test_sigint_during_a_json_pull_says_interrupted_in_json_too(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The text form (one line, exit 130, nothing on stdout) is tests/test_exit_codes.py's."""
    store = tmp_path / "store"
    upstream.publish(FILENAME, make_qcow2(tmp_path / "big.qcow2", size=8 << 20, seed=130))
    upstream.server.throttle(f"/pub/{FILENAME}", 64 << 10)  # two minutes for the whole file
    args = ["pull", str(upstream.recipe(FILENAME)), "--store", str(store)]
    child = subprocess.Popen(
        [sys.executable, "-m", "imagekit", *args, "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 0 for p in (store / "tmp").glob("*.part")):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the pull never started downloading"
        time.sleep(0.05)

    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)

    assert child.returncode == 130
    assert err.splitlines() == ["imagekit: interrupted"]
    assert json.loads(out) == {"error": "interrupted", "exit_code": 130}
    figures.add("cli: failures of --json commands printed as JSON")


@pytest.mark.parametrize(
    "args",
    [
        ["pull", "--bogus", "x"],
        ["pull"],
        ["import", "disk.qcow2"],
        ["no-such-command"],
        ["export", "x:1", "-o", "out.qcow2", "--format"],
        [],
    ],
    ids=[
        "unknown-option",
        "missing-argument",
        "missing-option",
        "unknown-command",
        "no-value",
        "nothing",
    ],
)
def test_usage_errors_are_one_imagekit_line_with_exit_2(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imagekit", *args], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("imagekit: error: ") and "--help" in line, line
    assert "\u256d" not in done.stderr and "Traceback" not in done.stderr  # no boxed panel
    figures.add("cli: usage errors in one line, exit 2")


def test_json_commands_print_json_on_failure_too(tmp_path: Path) -> None:
    store = tmp_path / "store"
    missing = imagekit("inspect", "nothing:here", "--json", store=store)
    usage = imagekit("import", "disk.qcow2", "--json", store=store)
    text = imagekit("inspect", "nothing:here", store=store)

    assert missing.returncode == 6
    line = one_line(missing)
    assert json.loads(missing.stdout) == {
        "error": line.removeprefix("imagekit: error: "),
        "exit_code": 6,
    }
    assert usage.returncode == 2
    assert json.loads(usage.stdout) == {
        "error": one_line(usage).removeprefix("imagekit: error: "),
        "exit_code": 2,
    }
    assert "'--name'" in json.loads(usage.stdout)["error"]
    assert text.returncode == 6 and text.stdout == ""  # JSON only when asked for
    figures.add("cli: failures of --json commands printed as JSON", 2)


def test_customize_flags_take_an_explicit_true_or_false() -> None:
    from imagekit.cli.build import _step_from_arguments
    from imagekit.customize import parse_step

    table = _step_from_arguments(["--network=no", "--selinux-relabel=false", "--hostname", "web1"])
    step = parse_step(table, where="command line")

    assert table == {"network": False, "selinux_relabel": False, "hostname": "web1"}
    assert [op.name for op in step.operations] == ["hostname"]
    assert _step_from_arguments(["--network=1", "--selinux-relabel=YES"]) == {
        "network": True,
        "selinux_relabel": True,
    }
    assert _step_from_arguments(["--network"]) == {"network": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--selinux-relabel=false"], "give at least one operation"),
        (["--network=no", "--selinux-relabel=0"], "give at least one operation"),
        (["--network=maybe"], "--network='maybe': give --network alone, or --network=true"),
        (["--selinux-relabel="], "--selinux-relabel='': give --selinux-relabel alone"),
    ],
)
def test_customize_flag_values_are_checked_before_the_store_is_opened(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = imagekit("customize", "no-such:image", *args, store=tmp_path / "store")

    assert done.returncode == 2
    assert message in one_line(done)
    figures.add("cli: customize flag values refused before the store opens")
