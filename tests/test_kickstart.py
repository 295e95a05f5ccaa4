"""Kickstart builds against a stand-in installer ISO that boots the host kernel under real qemu.

Each boot costs ~10 s under TCG, so successful builds are module-scoped and shared, and each
test counts the installer launches it adds. The stand-in (tests/installer_iso.py) follows
Anaconda's protocol: .treeinfo, stage2 by label, kickstart from OEMDRV or inst.ks=http.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import imagekit
from imagekit.build import BuildResult
from imagekit.errors import CustomizeError, RecipeError, VerificationError
from imagekit.guest import vm as installer
from imagekit.oci.media import MEDIA_EVIDENCE_CONSOLE_LOG, MEDIA_EVIDENCE_KICKSTART
from imagekit.recipe import HttpSource, KickstartSource, load_recipe, load_recipe_string
from imagekit.sources.kickstart import install as kickstart
from imagekit.sources.kickstart.iso import read_boot_files
from imagekit.sources.kickstart.validate import render, syntax_version, validate
from imagekit.sources.session import FetchOptions, Session
from imagekit.store import Store
from imagekit.verify.openpgp import key_fingerprints
from tests.conftest import REPO
from tests.events import Events
from tests.installer_iso import LABEL, build_installer_iso

KICKSTART = """\
# imagekit-test: write /etc/hostname {name}-{version}
# imagekit-test: write /etc/imagekit-arch {arch}
text
reboot
lang en_US.UTF-8
keyboard us
timezone Etc/UTC --utc
rootpw --lock
zerombr
clearpart --all --initlabel
autopart --type=plain --nohome
%packages
@core
%end
"""


@dataclass
class Built:
    store: Store
    directory: Path
    recipe: Path
    result: BuildResult
    launches: int


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("isos")
    return {
        kind: build_installer_iso(directory / f"{kind}.iso", behaviour=kind)
        for kind in ("install", "hang", "traceback")
    }


def write_recipe(
    directory: Path,
    iso: Path,
    *,
    name: str = "ks-test",
    kickstart_text: str = KICKSTART,
    delivery: str = "oemdrv",
    extra: str = "",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.ks").write_text(kickstart_text)
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\narch = "x86_64"\n[source]\nkind = "kickstart"\n'
        f'installer = {{ path = "{iso}", sha256 = "{digest}" }}\n'
        f'kickstart = "{name}.ks"\ndisk = {{ size = "64M" }}\nmemory = "512M"\n'
        f'delivery = "{delivery}"\ntimeout = "5m"\ninactivity = "60s"\nsyntax = "F41"\n' + extra
    )
    return path


def build_counted(store: Store, recipe: Path) -> tuple[BuildResult, int]:
    events = Events()
    result = store.build(imagekit.load_recipe(recipe), progress=events)
    return result, events.boots


@pytest.fixture(scope="module")
def oemdrv(tmp_path_factory: pytest.TempPathFactory, isos: dict[str, Path]) -> Built:
    directory = tmp_path_factory.mktemp("oemdrv")
    recipe = write_recipe(directory, isos["install"])
    store = Store(directory / "store")
    result, launches = build_counted(store, recipe)
    return Built(store, directory, recipe, result, launches)


def read_file(store: Store, digest: str, name: str, tmp_path: Path) -> str:
    """Read a file from the stand-in's ext2 disk with debugfs: no appliance launch needed."""
    raw = tmp_path / "disk.raw"
    source = store.blob_path(digest)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(source), str(raw)], check=True)
    done = subprocess.run(
        ["debugfs", "-R", f"cat {name}", str(raw)], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_install_is_stored_with_provenance(oemdrv: Built, tmp_path: Path) -> None:
    image = oemdrv.result.image
    assert oemdrv.launches == 1
    assert image.ref == "ks-test:1"
    source = image.config["source"]
    assert source["kind"] == "kickstart"
    iso_digest = (
        "sha256:" + hashlib.sha256(Path(source["installer"]["path"]).read_bytes()).hexdigest()
    )
    assert source["installer"]["digest"] == iso_digest
    assert source["installer"]["verification"]["level"] == "pinned"
    assert image.config["verification"]["level"] == "pinned"
    assert source["kickstart"]["syntax"] == "F41"
    rendered = oemdrv.store.read_blob(source["kickstart"]["digest"]).decode()
    assert "# imagekit-test: write /etc/hostname ks-test-1" in rendered
    console = oemdrv.store.read_blob(source["console_log"]).decode("utf-8", "replace")
    assert "imagekit-test installer: complete" in console
    assert f"inst.stage2=hd:LABEL={LABEL}" in " ".join(source["qemu"])
    assert "-no-reboot" in source["qemu"]
    assert source["seconds"] > 0
    media = [layer["mediaType"] for layer in image.manifest["layers"]]
    assert media == [
        "application/vnd.imagekit.disk.qcow2",
        MEDIA_EVIDENCE_KICKSTART,
        MEDIA_EVIDENCE_CONSOLE_LOG,
    ]
    assert read_file(oemdrv.store, image.disk_digest, "/etc/hostname", tmp_path) == "ks-test-1\n"
    assert read_file(oemdrv.store, image.disk_digest, "/etc/imagekit-arch", tmp_path) == "x86_64\n"
    assert oemdrv.store.fsck().ok


def test_unchanged_rebuild_boots_nothing(oemdrv: Built) -> None:
    result, launches = build_counted(oemdrv.store, oemdrv.recipe)
    assert launches == 0
    assert result.layers[0].cached
    assert result.image.digest == oemdrv.result.image.digest


def test_changed_vm_setting_is_a_new_build_key(oemdrv: Built, isos: dict[str, Path]) -> None:
    """The key covers the VM parameters: a bigger disk cannot reuse the smaller install."""
    keys = []
    for directory, size in ((oemdrv.directory, "64M"), (oemdrv.directory / "bigger", "128M")):
        path = write_recipe(directory, isos["install"], extra="")
        path.write_text(path.read_text().replace('size = "64M"', f'size = "{size}"'))
        recipe = load_recipe(path)
        assert isinstance(recipe.source, KickstartSource)
        session = Session(oemdrv.store, FetchOptions())
        prepared = kickstart.prepare(session, recipe, recipe.source)
        keys.append(prepared.key)
    assert keys[0] != keys[1]


def test_http_delivery(tmp_path: Path, isos: dict[str, Path]) -> None:
    recipe = write_recipe(tmp_path, isos["install"], delivery="http")
    store = Store(tmp_path / "store")
    result, launches = build_counted(store, recipe)
    assert launches == 1
    source = result.image.config["source"]
    command = " ".join(source["qemu"])
    assert f"inst.ks=http://{installer.HOST_FROM_GUEST}:" in command
    assert "OEMDRV" not in command and "oemdrv" not in command
    assert read_file(store, result.image.disk_digest, "/etc/hostname", tmp_path) == "ks-test-1\n"


def test_kickstart_error_is_found_before_anything_boots(
    tmp_path: Path, isos: dict[str, Path]
) -> None:
    broken = KICKSTART.replace("keyboard us", "keyboard us\nautopart --bogus-option")
    recipe = write_recipe(tmp_path, isos["install"], kickstart_text=broken)
    store = Store(tmp_path / "store")
    events = Events()
    with pytest.raises(RecipeError, match=r"line 7: .*bogus-option"):
        store.build(imagekit.load_recipe(recipe), progress=events)
    assert events.boots == 0
    assert not any(store.blobs_dir.iterdir())  # the installer was not even imported


def test_kickstart_that_waits_for_a_human_needs_force(tmp_path: Path) -> None:
    interactive = KICKSTART.replace("text\nreboot\n", "")
    with pytest.raises(RecipeError, match="force = true"):
        validate(interactive, "F41")
    validate(interactive, "F41", force=True)


def test_local_iso_must_match_its_pin(tmp_path: Path, isos: dict[str, Path]) -> None:
    recipe = write_recipe(tmp_path, isos["install"])
    text = recipe.read_text()
    recipe.write_text(text.replace(text.split('sha256 = "')[1][:64], "0" * 64))
    with pytest.raises(VerificationError, match="pins"):
        Store(tmp_path / "store").build(imagekit.load_recipe(recipe))


def qemu_processes(path: Path) -> list[int]:
    """Live processes whose command line mentions ``path`` (qemu names the disk under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and "qemu-system" in cmdline:
            found.append(int(entry.name))
    return found


def assert_nothing_stored(store: Store) -> None:
    assert store.refs() == []
    blobs = [p.read_bytes()[:4] for p in store.blobs_dir.iterdir()]
    assert b"QFI\xfb" not in blobs  # no disk layer
    assert not (store.cache_dir / "build").exists() or not any(
        (store.cache_dir / "build").iterdir()
    )


def test_hanging_installer_hits_the_inactivity_watchdog(
    tmp_path: Path, isos: dict[str, Path]
) -> None:
    recipe = write_recipe(tmp_path, isos["hang"], extra="")
    recipe.write_text(recipe.read_text().replace('inactivity = "60s"', 'inactivity = "20s"'))
    store = Store(tmp_path / "store")
    with pytest.raises(CustomizeError, match="inactivity") as caught:
        store.build(imagekit.load_recipe(recipe))
    assert "imagekit-test installer: starting" in str(caught.value)  # the console tail
    assert qemu_processes(store.root) == []
    assert_nothing_stored(store)
    logs = list((store.cache_dir / "kickstart").glob("*.console.log"))
    assert len(logs) == 1 and str(logs[0]) in str(caught.value)


def test_installer_traceback_ends_the_build_early(tmp_path: Path, isos: dict[str, Path]) -> None:
    recipe = write_recipe(tmp_path, isos["traceback"])
    store = Store(tmp_path / "store")
    with pytest.raises(CustomizeError, match="Traceback") as caught:
        store.build(imagekit.load_recipe(recipe))
    assert "ValueError: stand-in installer failure" in str(caught.value)
    assert qemu_processes(store.root) == []
    assert_nothing_stored(store)


def test_treeinfo_names_the_boot_files(isos: dict[str, Path]) -> None:
    boot = read_boot_files(isos["install"], "x86_64")
    assert (boot.kernel, boot.initrd, boot.volume_id) == (
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        LABEL,
    )
    with pytest.raises(CustomizeError, match="an installer for x86_64, not aarch64"):
        read_boot_files(isos["install"], "aarch64")


def test_bundled_kickstart_validates() -> None:
    recipe = load_recipe("fedora-server-ks")
    source = recipe.source
    assert isinstance(source, KickstartSource)
    assert source.installer_recipe == "fedora-server-dvd:41"
    assert syntax_version(source, recipe.version) == "F41"
    text = render(
        source.kickstart.read_text(), {"name": recipe.name, "version": "41", "arch": "x86_64"}
    )
    assert "--hostname=fedora-server-ks" in text
    validate(text, "F41")
    for name in ("fedora-server-dvd", "fedora-server-netinst"):
        installer_source = load_recipe(name).source
        assert isinstance(installer_source, HttpSource)
        assert installer_source.format == "iso"
        assert installer_source.level == "signed"
        for release, pin in installer_source.release_keys.items():
            assert set(pin.fingerprints) <= set(key_fingerprints(list(pin.files))), release


def test_recipe_rejects_an_unpinned_local_iso(tmp_path: Path, isos: dict[str, Path]) -> None:
    recipe = write_recipe(tmp_path, isos["install"])
    pinned = recipe.read_text().split("installer = ")[1].split("\n")[0]
    recipe.write_text(recipe.read_text().replace(pinned, f'{{ path = "{isos["install"]}" }}'))
    with pytest.raises(RecipeError, match="must be pinned"):
        load_recipe(recipe)


def test_documented_recipe_parses() -> None:
    text = (REPO / "docs" / "kickstart.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    recipe = load_recipe_string(example[1], base_dir=REPO / "recipes")
    assert isinstance(recipe.source, KickstartSource)
    assert recipe.source.installer_recipe == "fedora-server-dvd:41"
    assert recipe.source.kernel_args == ("inst.sshd",)
