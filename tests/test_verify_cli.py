"""`imagekit verify` proves something or says it did not, and every file it reads is bounded.

Without a key a checksum file proves nothing, so "OK" would be a lie: verify refuses. Every path
it takes (FILE, --checksum, --signature, --key) may be a directory, missing, empty or an endless
device: each is one `imagekit: error:` line with a documented exit code, never a traceback or an
unbounded read. The same bounded reads serve pulls (file:// URLs, key files) and the config file.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import imagekit
from imagekit import config
from imagekit.core.capped import read_capped
from imagekit.net.download import Downloader
from imagekit.net.transport import Transport
from imagekit.verify.openpgp import verify_detached
from tests.gpgtools import TestKey, clearsign, detach_sign
from tests.reliability import figures

NAME = "image.img"


@dataclass(frozen=True)
class Evidence:
    """A downloaded file and what its publisher signed about it."""

    disk: Path
    sums: Path  # plain SHA256SUMS
    signature: Path  # detached signature of sums
    clearsigned: Path  # the same lines, clearsigned
    key: Path
    line: str  # the signed line for the disk


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory, signing_key: TestKey) -> Evidence:
    directory = tmp_path_factory.mktemp("verify")
    disk = directory / NAME
    disk.write_bytes(random.Random(7).randbytes(64 << 10))
    line = f"{hashlib.sha256(disk.read_bytes()).hexdigest()}  {NAME}\n"
    text = (line + f"{'ab' * 32}  other.img\n").encode()
    sums = directory / "SHA256SUMS"
    sums.write_bytes(text)
    signature = directory / "SHA256SUMS.gpg"
    signature.write_bytes(detach_sign(signing_key, text))
    clearsigned = directory / "SHA256SUMS.asc"
    clearsigned.write_bytes(clearsign(signing_key, text))
    return Evidence(disk, sums, signature, clearsigned, signing_key.public_key, line)


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.startswith("imagekit: error: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert "OK" not in done.stdout


def test_with_the_key_a_good_file_is_ok(evidence: Evidence) -> None:
    done = verify(evidence.disk, "--checksum", evidence.clearsigned, "--key", evidence.key)
    assert done.returncode == 0, done.stderr
    assert f"{evidence.disk}: OK" in done.stdout


# Without a key nothing is verified


@pytest.mark.parametrize("with_file", [True, False], ids=["file", "listing"])
def test_without_a_key_nothing_is_verified_and_it_says_so(
    evidence: Evidence, with_file: bool
) -> None:
    args = [evidence.disk] if with_file else []

    done = verify(*args, "--checksum", evidence.clearsigned)

    one_line_error(done, 4, "nothing was verified", "--key")
    assert done.stdout == ""
    figures.add("verify: forged or unkeyed checksum files refused")


def test_lines_forged_around_the_signed_block_prove_nothing(
    evidence: Evidence, signing_key: TestKey, tmp_path: Path
) -> None:
    """The signed block lists only other.img; forged lines around it list the file."""
    signed = clearsign(signing_key, f"{'cd' * 32}  other.img\n".encode())
    forged = tmp_path / "SHA256SUMS.asc"
    forged.write_bytes(evidence.line.encode() + signed + evidence.line.encode())

    one_line_error(verify(evidence.disk, "--checksum", forged), 4, "nothing was verified")
    with_key = verify(evidence.disk, "--checksum", forged, "--key", evidence.key)
    one_line_error(with_key, 4, f"{NAME} is not listed")
    figures.add("verify: forged or unkeyed checksum files refused")


@pytest.mark.parametrize("with_file", [True, False], ids=["file", "listing"])
def test_a_file_listed_with_two_digests_is_refused_even_when_signed(
    evidence: Evidence, signing_key: TestKey, tmp_path: Path, with_file: bool
) -> None:
    twice = tmp_path / "SHA256SUMS.asc"
    twice.write_bytes(clearsign(signing_key, (evidence.line + f"{'ef' * 32}  {NAME}\n").encode()))
    args = [evidence.disk] if with_file else []

    done = verify(*args, "--checksum", twice, "--key", evidence.key)

    one_line_error(done, 4, "different sha256 digests")
    assert done.stdout == ""
    figures.add("verify: forged or unkeyed checksum files refused")


def test_the_library_refuses_too(evidence: Evidence) -> None:
    with pytest.raises(imagekit.SignatureError, match="nothing was verified"):
        imagekit.verify_local(evidence.clearsigned, file=evidence.disk)


# Every path: a directory, a missing file, an empty file, an endless device


def bad_path(kind: str, tmp_path: Path) -> Path:
    if kind == "directory":
        return tmp_path
    if kind == "missing":
        return tmp_path / "no-such-file"
    if kind == "empty":
        (tmp_path / "empty").write_bytes(b"")
        return tmp_path / "empty"
    return Path("/dev/zero")


# An empty file is a file: it fails verification (4); the others are not files at all (2).
@pytest.mark.parametrize("kind", ["directory", "missing", "empty", "devzero"])
@pytest.mark.parametrize("role", ["FILE", "--checksum", "--signature", "--key"])
def test_every_path_argument_fails_in_one_line(
    evidence: Evidence, tmp_path: Path, role: str, kind: str
) -> None:
    paths = {
        "FILE": evidence.disk,
        "--checksum": evidence.sums,
        "--signature": evidence.signature,
        "--key": evidence.key,
    }
    paths[role] = bad_path(kind, tmp_path)
    options = [
        arg for option in ("--checksum", "--signature", "--key") for arg in (option, paths[option])
    ]

    done = verify(paths["FILE"], *options, "--name", NAME)

    if kind == "empty":
        one_line_error(done, 4)
    else:
        one_line_error(done, 2, "cannot read", str(paths[role]))
    figures.add("verify: path arguments (directory, missing, empty, /dev/zero) refused in one line")


# The same bounded reads elsewhere


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_capped(fifo, 100, "checksum file")
        except BaseException as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "opening the FIFO blocked"
    assert isinstance(result[0], imagekit.RecipeError)
    assert "not a regular file" in str(result[0])


def test_file_urls_read_only_regular_files(tmp_path: Path) -> None:
    with pytest.raises(imagekit.FetchError, match="not a regular file"):
        Transport().fetch_small("file:///dev/zero")
    with pytest.raises(imagekit.FetchError, match="not a regular file"):
        Downloader(tmp_path / "tmp").download("file:///dev/zero", name="zero")
    assert not list((tmp_path / "tmp").glob("*.part"))


def test_a_huge_key_file_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.asc"
    with huge.open("wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(imagekit.SignatureError, match=f"key file {huge}: it is larger than"):
        verify_detached(b"data", b"sig", [huge])


def test_a_huge_config_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "xdg"
    (home / "imagekit").mkdir(parents=True)
    (home / "imagekit" / "config.toml").write_bytes(b"# padding\n" * (110 << 10))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in (config.HOME_ENV, config.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(imagekit.RecipeError, match=r"config\.toml is larger than"):
        config.load_settings()
