"""Every file read as evidence, key, metadata or config is a regular file under a size cap.

``/dev/zero`` would be read until memory runs out, a FIFO may never deliver, a directory is a
typo: each is one typed error naming the file, never a traceback or an unbounded read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import imagekit
from imagekit import config
from imagekit.core.capped import read_capped
from imagekit.net.download import Downloader
from imagekit.net.transport import Transport
from imagekit.verify.openpgp import verify_detached


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
