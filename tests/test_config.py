"""Settings: the config file's mirror is used, invalid values are errors, trust is never ambient."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagekit
from imagekit import config
from tests.clirun import imagekit as run_imagekit
from tests.conftest import Upstream, make_qcow2
from tests.gpgtools import TestKey

UNREACHABLE = "https://upstream.invalid/pub/"  # .invalid never resolves: only a mirror can serve


def write_config(home: Path, text: str) -> None:
    (home / "imagekit").mkdir(parents=True, exist_ok=True)
    (home / "imagekit" / "config.toml").write_text(text)


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in (config.HOME_ENV, config.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


def test_the_config_files_mirror_serves_a_pull(
    upstream: Upstream, config_home: Path, tmp_path: Path
) -> None:
    data = make_qcow2(tmp_path / "disk.qcow2", seed=3)
    upstream.publish("Mirrored-1.qcow2", data)
    recipe = upstream.recipe("Mirrored-1.qcow2", base=UNREACHABLE)
    write_config(config_home, f'mirror = "{upstream.server.url("/pub/")}"\n')

    image = imagekit.open_store(tmp_path / "api-store").pull(imagekit.load_recipe(recipe))
    pulled = run_imagekit(
        "pull", str(recipe), "--store", str(tmp_path / "cli-store"), config_home=config_home
    )

    assert image.path.read_bytes() == data
    assert image.provenance["source"]["mirror"] == upstream.server.url("/pub/")
    assert pulled.returncode == 0, pulled.stderr
    paths = {entry.path for entry in upstream.server.log()}
    assert paths == {"/pub/CHECKSUM", "/pub/Mirrored-1.qcow2"}


def test_a_mirror_flag_wins_over_the_config_file(
    upstream: Upstream, config_home: Path, tmp_path: Path
) -> None:
    data = make_qcow2(tmp_path / "disk.qcow2", seed=4)
    upstream.publish("Flagged-1.qcow2", data)
    recipe = upstream.recipe("Flagged-1.qcow2", base=UNREACHABLE)
    write_config(config_home, 'mirror = "http://127.0.0.1:9/nothing-here/"\n')

    store = imagekit.open_store(tmp_path / "store")
    image = store.pull(imagekit.load_recipe(recipe), mirror=upstream.server.url("/pub/"))

    assert image.path.read_bytes() == data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("store = 5\n", "store must be a non-empty string, not 5"),
        ('store = ""\n', "store must be a non-empty string"),
        ('mirror = "ftp://mirror.lan/"\n', "must be an http://, https:// or file:// URL"),
        ("mirror = true\n", "mirror must be a non-empty string, not True"),
        ("connections = 0\n", "connections must be a whole number from 1 to 16"),
        ('connections = "4"\n', "connections must be a whole number from 1 to 16"),
        ('mirrors = ["ftp://mirror.lan/"]\n', "must be an http://, https:// or file:// URL"),
        ('mirrors = "https://mirror.lan/"\n', "mirrors must be a list of non-empty strings"),
        ('stroe = "/srv"\n', "unknown setting(s) stroe"),
        ("store = [\n", "cannot read config file"),
    ],
)
def test_an_invalid_config_value_is_a_one_line_error(
    config_home: Path, tmp_path: Path, text: str, message: str
) -> None:
    write_config(config_home, text)
    with pytest.raises(imagekit.RecipeError, match=r"config\.toml") as error:
        imagekit.open_store()
    assert message in str(error.value)

    shown = run_imagekit("images", config_home=config_home)
    assert shown.returncode == 2
    assert shown.stderr.startswith("imagekit: error: ") and message in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr


def test_the_config_files_store_is_used_and_the_environment_wins(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(config_home, f'store = "{tmp_path / "from-config"}"\n')
    assert imagekit.open_store().root == tmp_path / "from-config"
    monkeypatch.setenv(config.HOME_ENV, str(tmp_path / "from-env"))
    assert imagekit.open_store().root == tmp_path / "from-env"
    assert imagekit.open_store(tmp_path / "given").root == tmp_path / "given"


def test_no_environment_variable_changes_which_keys_are_trusted(
    upstream: Upstream, other_key: TestKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old test hook IMAGEKIT_TEST_KEYS is gone: keys come from the recipe or the caller."""
    data = make_qcow2(tmp_path / "disk.qcow2", seed=5)
    upstream.publish("Signed-1.qcow2", data)
    recipe = imagekit.load_recipe(upstream.recipe("Signed-1.qcow2", key=other_key))
    monkeypatch.setenv("IMAGEKIT_TEST_KEYS", str(upstream.key.public_key))
    monkeypatch.setenv("IMAGEKIT_KEYS", str(upstream.key.public_key))
    store = imagekit.open_store(tmp_path / "store")

    with pytest.raises(imagekit.SignatureError):
        store.pull(recipe)
    assert store.refs() == []

    image = store.pull(recipe, keys_override=(upstream.key.public_key,))
    assert image.provenance["verification"]["keys_override"] == [str(upstream.key.public_key)]
    assert image.provenance["verification"]["signer"] == upstream.key.fingerprint


def test_the_accelerator_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ACCEL_ENV, " TCG ")
    assert config.accel_choice() == "tcg"
    monkeypatch.setenv(config.ACCEL_ENV, "fast")
    with pytest.raises(imagekit.RecipeError, match="IMAGEKIT_ACCEL must be kvm, tcg or auto"):
        config.accel_choice()
