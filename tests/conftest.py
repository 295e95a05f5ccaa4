"""Shared fixtures: generated keys, a loopback "upstream", qcow2 images made in the session."""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.store import Store
from tests.gpgtools import TestKey, clearsign, make_key
from tests.httpserver import LoopbackServer

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "tests" / "data" / "real"
KEYS = REPO / "recipes" / "keys"


def cached_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache (util-linux's fincore)."""
    command = ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def run_qemu_img(*args: str) -> None:
    """Run qemu-img, asking again when creating a LUKS disk fails its PBKDF timing.

    qemu-img times PBKDF iterations by CPU time, and on some VMs that reading is too coarse:
    "Unable to get accurate CPU usage" (10 of 40 tries on one CI machine).
    """
    for _attempt in range(10):
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
        if "Unable to get accurate CPU usage" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr


def make_qcow2(path: Path, *, size: int = 4 << 20, seed: int = 0) -> bytes:
    """A qcow2 whose first ``size`` bytes are seeded random data; returns its bytes."""
    raw = path.with_suffix(".raw")
    raw.write_bytes(random.Random(seed).randbytes(size))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return path.read_bytes()


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> TestKey:
    return make_key(tmp_path_factory.mktemp("key"), "imagekit upstream")


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> TestKey:
    return make_key(tmp_path_factory.mktemp("key"), "somebody else")


@pytest.fixture(scope="session")
def image_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_qcow2(tmp_path_factory.mktemp("img") / "disk.qcow2", seed=1)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@dataclass
class Upstream:
    """Publishes images the way Fedora does: image + BSD-style CHECKSUM clearsigned by a key."""

    server: LoopbackServer
    directory: Path
    key: TestKey

    def publish(
        self,
        filename: str,
        data: bytes,
        *,
        checksum_name: str = "CHECKSUM",
        signed: bool = True,
        extra_before: str = "",
        extra_after: str = "",
    ) -> str:
        """Serve ``data`` and its signed CHECKSUM under /pub/; return the image URL."""
        digest = hashlib.sha256(data).hexdigest()
        text = f"# {filename}: {len(data)} bytes\nSHA256 ({filename}) = {digest}\n"
        body = clearsign(self.key, text.encode()) if signed else text.encode()
        self.server.add(f"/pub/{filename}", data)
        self.server.add(
            f"/pub/{checksum_name}", extra_before.encode() + body + extra_after.encode()
        )
        return self.server.url(f"/pub/{filename}")

    def recipe(
        self,
        filename: str,
        *,
        name: str = "test-cloud",
        version: str = "1",
        key: TestKey | None = None,
        extra: str = "",
        checksum: bool = True,
        base: str | None = None,
    ) -> Path:
        """Write a recipe for ``filename`` pinning ``key`` (default: the signing key)."""
        pinned = key or self.key
        key_file = self.directory / f"{pinned.fingerprint}.asc"
        key_file.write_bytes(pinned.public_key.read_bytes())
        root = base or self.server.url("/pub/")
        lines = [
            f'name = "{name}"',
            f'version = "{version}"',
            'arch = "x86_64"',
            "[source]",
            'kind = "http"',
            f'url = "{root}{filename}"',
        ]
        if checksum:
            lines.append(f'checksum_url = "{root}CHECKSUM"')
            lines.append(f'keys = ["{key_file.name}"]')
        path = self.directory / f"{name}-{version}.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path


@pytest.fixture
def upstream(server: LoopbackServer, signing_key: TestKey, tmp_path: Path) -> Upstream:
    directory = tmp_path / "recipes"
    directory.mkdir()
    return Upstream(server, directory, signing_key)
