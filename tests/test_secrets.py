"""No secret in what is recorded: config blobs, manifests, evidence, logs, the build cache, the
index and ``--json`` output hold no password of a recipe's steps or a kickstart, nor an
unsalted hash of one.

The end-to-end tests build for real (the appliance for a scratch + password step, the stand-in
installer for a kickstart) and then grep every file of the store for each secret's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from imagekit.customize import canonical_step, parse_step, recorded_recipe
from imagekit.customize.redact import WITHHELD
from imagekit.errors import CustomizeError
from imagekit.oci.media import DISK_FORMATS
from imagekit.recipe import KickstartSource, Recipe, load_recipe, load_recipe_string
from imagekit.sources.kickstart import install as kickstart
from imagekit.sources.kickstart.redact import REDACTED, redact
from imagekit.sources.session import FetchOptions, Session
from imagekit.store import Store
from tests.clirun import imagekit
from tests.guestimage import build_guest_tree
from tests.installer_iso import build_installer_iso
from tests.reliability import figures
from tests.test_kickstart import KICKSTART, write_recipe

# Random per run, so that finding one can only mean imagekit wrote it.
ROOT_SECRET = "root-" + secrets.token_hex(8)
ALICE_SECRET = "alice-" + secrets.token_hex(8)
FILE_SECRET = "file-" + secrets.token_hex(8)

HEADER = (
    'name = "sec"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "tree"\nsize = "256M"\n'
)


def needles(*values: str) -> dict[str, bytes]:
    """Each secret's bytes and the hex of its plain sha256 (a dictionary lookup away)."""
    found = {value: value.encode() for value in values}
    found |= {f"sha256({v})": hashlib.sha256(v.encode()).hexdigest().encode() for v in values}
    return found


def files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def assert_nowhere(root: Path, secret: dict[str, bytes], *, except_: Iterable[Path] = ()) -> int:
    """No file under ``root`` (but ``except_``) holds any of the bytes; returns files read."""
    skipped = set(except_)
    hits, count = [], 0
    for path in files_under(root):
        if path in skipped:
            continue
        data = path.read_bytes()
        count += 1
        hits += [f"{name} in {path}" for name, needle in secret.items() if needle in data]
    assert hits == []
    return count


# --- the recipe text, as provenance records it ---------------------------------------------


def load(text: str, directory: Path) -> Recipe:
    (directory / "tree").mkdir(exist_ok=True)
    return load_recipe_string(text, base_dir=directory)


def test_recorded_recipe_shows_secret_values_as_the_step_record_does(tmp_path: Path) -> None:
    text = HEADER + (
        f"# {ROOT_SECRET} is what root gets\n"
        "[[customize]]\n"
        f'root_password = "password:{ROOT_SECRET}"  # was {ROOT_SECRET}\n'
        f'password = [\'alice:password:{ALICE_SECRET}\', """bob:random""",\n'
        f"  '''carol:locked:password:{FILE_SECRET}''']\n"
        'hostname = "web1"\n'
        "[[customize]]\n"
        # the same secret spelled with an escape: it must still be found
        f'"password" = ["dave:password:\\u0{ord(ALICE_SECRET[0]):03x}{ALICE_SECRET[1:]}"]\n'
    )
    recipe = load(text, tmp_path)

    recorded = recorded_recipe(recipe)

    for secret in (ROOT_SECRET, ALICE_SECRET, FILE_SECRET):
        assert secret not in recorded.text and secret not in json.dumps(recorded.customize)
    assert tomllib.loads(recorded.text)["customize"] == [
        {
            "root_password": "set",
            "password": ["alice:set", "bob:random", "carol:locked:set"],
            "hostname": "web1",
        },
        {"password": ["dave:set"]},
    ]
    assert "# <redacted> is what root gets" in recorded.text
    assert 'root_password = "set"  # was <redacted>' in recorded.text
    assert recorded.text.startswith(HEADER)  # everything else as written
    assert recorded.digest != recipe.digest  # the digest is the recorded text's
    assert recorded.digest == load(recorded.text, tmp_path).digest


def test_a_line_that_repeats_a_secret_elsewhere_is_withheld(tmp_path: Path) -> None:
    text = (
        HEADER.replace("[source]", f'description = "root is {ROOT_SECRET}"\n[source]')
        + f'[[customize]]\nroot_password = "password:{ROOT_SECRET}"\n'
    )
    recorded = recorded_recipe(load(text, tmp_path))
    assert ROOT_SECRET not in recorded.text
    assert recorded.text.splitlines()[2] == WITHHELD
    assert 'root_password = "set"' in recorded.text


def test_a_recipe_without_secret_values_is_recorded_verbatim(tmp_path: Path) -> None:
    text = HEADER + '[[customize]]\nhostname = "web1"\nrun_command = ["echo hi"]\n'
    recipe = load(text, tmp_path)
    assert recorded_recipe(recipe) is recipe


def test_build_keys_take_secrets_keyed_by_the_store(tmp_path: Path) -> None:
    """The layer key is recorded (config, cache file names): a plain sha256 of the password in
    it would let anyone try a dictionary against it."""
    step = parse_step({"root_password": f"password:{ROOT_SECRET}"}, where="t")
    one, other = Store(tmp_path / "one").digest_key(), Store(tmp_path / "two").digest_key()
    canonical = json.dumps(canonical_step(step, tmp_path, one))
    assert hashlib.sha256(ROOT_SECRET.encode()).hexdigest() not in canonical
    assert ROOT_SECRET not in canonical
    assert canonical == json.dumps(canonical_step(step, tmp_path, one))  # stable per store
    assert canonical != json.dumps(canonical_step(step, tmp_path, other))


def test_the_digest_key_is_the_owners_and_stays(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    key = store.digest_key()
    assert len(key) == 32 and Store(store.root).digest_key() == key
    assert os.stat(store.root / "digest.key").st_mode & 0o777 == 0o600


# --- kickstart text ------------------------------------------------------------------------


SECRET_KICKSTART = KICKSTART.replace(
    "rootpw --lock",
    f'rootpw --plaintext "{ROOT_SECRET}"\n'
    f"user --name=alice --password={ALICE_SECRET} --plaintext\n"
    f"bootloader --location=mbr --password {FILE_SECRET}\n"
    # the stand-in echoes "Installing: writing PATH": the console will hold the secret
    f"# imagekit-test: write /etc/motd-{ROOT_SECRET} hello",
)


def test_kickstart_secrets_are_redacted_where_they_stand_and_wherever_repeated() -> None:
    text = (
        SECRET_KICKSTART
        + "sshpw --username=installer --iscrypted $6$salt$cryptedvalue\n"
        + "part /srv --fstype=ext4 --encrypted --passphrase=luks-words\n"
        + f"%post\necho 'alice:{ALICE_SECRET}' | chpasswd\nrootpw is not a command here\n%end\n"
    )
    recorded = redact(text)
    kinds = (ROOT_SECRET, ALICE_SECRET, FILE_SECRET, "$6$salt$cryptedvalue", "luks-words")
    for secret in kinds:
        assert secret not in recorded.text
        assert secret in recorded.secrets
    figures.add(
        "secrets: kickstart secret forms redacted (rootpw, user, bootloader, sshpw, luks)",
        len(kinds),
    )
    lines = recorded.text.splitlines()
    assert f"rootpw --plaintext '{REDACTED}'" in lines
    assert f"user --name=alice '--password={REDACTED}' --plaintext" in lines
    assert f"bootloader --location=mbr --password '{REDACTED}'" in lines
    assert f"sshpw --username=installer --iscrypted '{REDACTED}'" in lines
    assert f"echo 'alice:{REDACTED}' | chpasswd" in lines
    assert "rootpw is not a command here" in lines  # inside %post: a script, not a command
    assert recorded.scrub(f"console: writing /etc/motd-{ROOT_SECRET}") == (
        f"console: writing /etc/motd-{REDACTED}"
    )


@pytest.fixture(scope="module")
def installer_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_installer_iso(tmp_path_factory.mktemp("iso") / "install.iso")


def disk_blobs(store: Store) -> set[Path]:
    disks = set()
    for _, descriptor in store.refs():
        for layer in store.manifest(descriptor.digest)["layers"]:
            if layer["mediaType"] in DISK_FORMATS:
                disks.add(store.blob_path(layer["digest"]))
    return disks


def test_a_kickstart_build_records_no_secret(tmp_path: Path, installer_iso: Path) -> None:
    recipe = write_recipe(
        tmp_path, installer_iso, name="ks-secret", kickstart_text=SECRET_KICKSTART
    )
    store_dir = tmp_path / "store"

    done = imagekit(
        "build", str(recipe), "--store", str(store_dir), "--json", config_home=tmp_path, timeout=600
    )

    assert done.returncode == 0, done.stderr
    secret = needles(ROOT_SECRET, ALICE_SECRET, FILE_SECRET)
    assert not [name for name, needle in secret.items() if needle.decode() in done.stdout]
    store = Store(store_dir)
    image = store.image("ks-secret:1")
    source = image.config["source"]
    assert source["kickstart"]["secrets_redacted"] == 3
    assert (
        f"rootpw --plaintext '{REDACTED}'"
        in store.read_blob(source["kickstart"]["digest"]).decode()
    )
    console = store.read_blob(source["console_log"]).decode()
    assert f"Installing: writing /etc/motd-{REDACTED}" in console  # echoed, then cut
    # The installed disk holds what the installer wrote into the guest (the stand-in copies the
    # kickstart to /root/anaconda-ks.cfg verbatim; Anaconda writes a crypted hash there): it is
    # the guest's, not a record. Every other file of the store is one.
    read = assert_nowhere(store.root, secret, except_=disk_blobs(store))
    assert read >= 8  # configs, manifests, evidence, console, index, cache entries
    figures.add("secrets: files of a kickstart build's store grepped, none with a secret", read)


def test_a_failed_kickstart_keeps_a_console_log_without_secrets(
    tmp_path: Path, installer_iso: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_recipe(
        write_recipe(tmp_path, installer_iso, name="ks-fail", kickstart_text=SECRET_KICKSTART)
    )
    assert isinstance(recipe.source, KickstartSource)
    store = Store(tmp_path / "store")
    prepared = kickstart.prepare(Session(store, FetchOptions()), recipe, recipe.source)

    def echoing_installer(*args: object) -> None:
        log = args[3]
        assert isinstance(log, Path)
        log.write_text(f"Installing: writing /etc/motd-{ROOT_SECRET}\nboom\n")
        raise CustomizeError(f"installer failed; console tail:\n{ROOT_SECRET}\n(log: {log})")

    monkeypatch.setattr(kickstart, "_run_installer", echoing_installer)  # a failing VM, faked
    with pytest.raises(CustomizeError) as caught:
        kickstart.install(store, recipe, prepared, lambda _: None)

    assert ROOT_SECRET not in str(caught.value) and REDACTED in str(caught.value)
    logs = list((store.cache_dir / "kickstart").glob("*.console.log"))
    assert (
        len(logs) == 1
        and logs[0].read_text() == f"Installing: writing /etc/motd-{REDACTED}\nboom\n"
    )
    assert_nowhere(store.root, needles(ROOT_SECRET))


def test_two_stores_key_one_kickstart_differently(tmp_path: Path, installer_iso: Path) -> None:
    """The kickstart enters its build key keyed: the key is no dictionary for its rootpw."""
    recipe = load_recipe(write_recipe(tmp_path, installer_iso, kickstart_text=SECRET_KICKSTART))
    assert isinstance(recipe.source, KickstartSource)
    keys = []
    for name in ("one", "two", "one"):
        store = Store(tmp_path / name)
        keys.append(kickstart.prepare(Session(store, FetchOptions()), recipe, recipe.source).key)
    assert keys[0] == keys[2] != keys[1]


# --- a recipe with password steps, built for real --------------------------------------------


@pytest.mark.guestfs
def test_a_build_with_password_steps_records_no_secret(tmp_path: Path) -> None:
    build_guest_tree(tmp_path / "tree")
    (tmp_path / "nobody.password").write_text(FILE_SECRET + "\n")
    recipe = tmp_path / "sec.toml"
    recipe.write_text(
        HEADER + f"# root's password is {ROOT_SECRET}\n[[customize]]\n"
        f'root_password = "password:{ROOT_SECRET}"\n'
        'user = ["alice"]\n'
        'password = ["nobody:file:nobody.password", "alice:random"]\n'
    )
    store_dir = tmp_path / "store"

    done = imagekit(
        "build", str(recipe), "--store", str(store_dir), "--json", config_home=tmp_path, timeout=600
    )

    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    generated = output["generated_passwords"]["alice"]  # the user's, shown once
    assert len(generated) == 20
    assert ROOT_SECRET not in done.stdout and FILE_SECRET not in done.stdout
    store = Store(store_dir)
    image = store.image("sec:1")
    assert image.config["steps"][-1]["step"]["root_password"] == "set"
    assert 'root_password = "set"' in image.config["recipe"]["text"]
    assert "# root's password is <redacted>" in image.config["recipe"]["text"]
    # Every file: blobs (disks included: they hold crypt hashes only), config, manifests,
    # index.json, the build cache and its records, the digest key.
    read = assert_nowhere(store.root, needles(ROOT_SECRET, FILE_SECRET, generated))
    assert read >= 8
    figures.add("secrets: files of a password-step build's store grepped, none with a secret", read)

    again = imagekit(
        "build", str(recipe), "--store", str(store_dir), "--json", config_home=tmp_path, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert all(layer["cached"] for layer in json.loads(again.stdout)["layers"])  # keys stable
    assert json.loads(again.stdout)["generated_passwords"] == {}  # shown once, never kept
