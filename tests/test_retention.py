"""Retention: ``gc --keep-last N [--older-than D] [--dry-run]`` locally, ``prune`` in a registry.

Real parts throughout: disks are qcow2 files made by qemu-img and imported through the API, a
derived image is a qcow2 overlay backing onto its base's blob by name (as builds make them),
signatures are cosign's, and the registry is Debian's docker-registry (tests/registry.py).
Images "made" days ago carry that time where the store records it (the manifest's
``org.opencontainers.image.created`` and the config's ``created``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imagekit.errors import FetchError, RecipeError
from imagekit.image import Image
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import CREATED_ANNOTATION, MEDIA_DISK_QCOW2, PARENT_ANNOTATION
from imagekit.oci.registry import Registry
from imagekit.oci.retention import Policy, Tagged, choose, parse_age
from imagekit.store import Store
from tests.clirun import imagekit, imagekit_json
from tests.conftest import make_qcow2
from tests.registry import RunningRegistry, running_registry

NOW = datetime.now(UTC).replace(microsecond=0)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def disk(store: Store, tmp_path: Path, seed: int) -> Descriptor:
    """A small qcow2 of seeded data, imported through the API (then untagged: a bare blob)."""
    path = tmp_path / f"disk-{seed}.qcow2"
    make_qcow2(path, size=256 << 10, seed=seed)
    image = store.import_file(path, f"import-{seed}:1")
    store.remove(f"import-{seed}:1")
    return image.disk


def made(
    store: Store,
    ref: str,
    layers: list[Descriptor],
    when: datetime | None,
    subject: Descriptor | None = None,
) -> Image:
    """Tag an image of ``layers`` recorded as made at ``when`` (None: a time it does not say)."""
    config: dict[str, Any] = {"name": ref.partition(":")[0], "version": ref.partition(":")[2]}
    annotations = {}
    if when is not None:
        config["created"] = annotations[CREATED_ANNOTATION] = stamp(when)
    manifest = store.write_manifest(config, layers, annotations, subject=subject)
    store.tag(ref, manifest)
    return store.image(ref)


def overlay(store: Store, tmp_path: Path, base: Descriptor) -> Descriptor:
    """A qcow2 layer backing onto ``base``'s blob by name, 64 KiB written, committed."""
    work = tmp_path / f"layer-{base.digest[7:19]}"
    work.mkdir()
    name = base.digest.removeprefix("sha256:")
    (work / name).symlink_to(store.blob_path(base.digest))
    top = work / "top.qcow2"
    qemu = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", name, str(top)]
    subprocess.run(qemu, check=True)
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(top)]
    subprocess.run(write, check=True, capture_output=True)
    temp = store.new_temp()
    shutil.copyfile(top, temp)
    digest = "sha256:" + hashlib.sha256(temp.read_bytes()).hexdigest()
    layer = store.commit_file(temp, digest, MEDIA_DISK_QCOW2)
    return Descriptor(layer.media_type, layer.digest, layer.size, {PARENT_ANNOTATION: base.digest})


def snapshot(store: Store) -> tuple[bytes, list[str]]:
    return (store.root / "index.json").read_bytes(), sorted(
        p.name for p in store.blobs_dir.iterdir()
    )


@pytest.fixture
def nightly(store: Store, tmp_path: Path) -> dict[str, Image]:
    """Five nightly images of ``deb`` (imported in one second: ties go by tagging order), an
    ``app`` built on the oldest, and signatures of deb:1 and deb:3."""
    images = {}
    for number in range(1, 6):
        path = tmp_path / f"deb-{number}.qcow2"
        make_qcow2(path, size=256 << 10, seed=100 + number)
        images[f"deb:{number}"] = store.import_file(path, f"deb:{number}")
    base = images["deb:1"]
    layer = overlay(store, tmp_path, base.disk)
    images["app:1"] = made(store, "app:1", [base.disk, layer], NOW, store.resolve("deb:1"))
    key = Store.generate_key(tmp_path / "signer", passphrase="").private
    for ref in ("deb:1", "deb:3"):
        store.sign(ref, key, passphrase="")
    return images


def test_gc_keep_last_keeps_the_last_n_and_every_blob_they_need(
    store: Store, nightly: dict[str, Image]
) -> None:
    before = snapshot(store)
    dry = imagekit_json("gc", "--keep-last", "2", "--dry-run", store=store)
    assert dry["removed_refs"] == ["deb:2", "deb:3"]
    assert dry["kept_refs"] == {
        "app:1": "the newest",
        "deb:1": "a kept image is built on it",
        "deb:4": "one of the 2 newest",
        "deb:5": "the newest",
    }
    sig3 = f"deb:{nightly['deb:3'].digest.replace(':', '-')}.sig"
    sig1 = f"deb:{nightly['deb:1'].digest.replace(':', '-')}.sig"
    assert dry["removed_signatures"] == [sig3]
    gone = {nightly["deb:2"].disk_digest, nightly["deb:3"].disk_digest}
    assert gone <= set(dry["removed_blobs"])
    assert snapshot(store) == before  # a dry run changes nothing

    done = imagekit("gc", "--keep-last", "2", store=store)
    assert done.returncode == 0, done.stderr
    assert "untagged deb:2\nuntagged deb:3\n" in done.stdout
    assert "kept deb:1: a kept image is built on it" in done.stdout
    refs = [ref for ref, _ in store.refs()]
    assert refs == sorted(["app:1", "deb:1", "deb:4", "deb:5", sig1])
    assert not any(store.has_blob(d) for d in gone)
    for ref in ("app:1", "deb:1", "deb:4", "deb:5"):
        image = store.image(ref)
        needed = [image.digest, image.manifest["config"]["digest"]]
        needed += [layer["digest"] for layer in image.manifest["layers"]]
        assert all(store.has_blob(d) for d in needed), ref
    chain = ["qemu-img", "info", "-U", "--backing-chain", str(store.image("app:1").path)]
    subprocess.run(chain, check=True, capture_output=True)  # the app's base is still there
    assert [s.ref for s in store.signatures("deb:1")] == [sig1]
    assert store.fsck().ok

    again = store.gc(keep_last=2)  # nothing more to do: the same policy is a fixed point
    assert again.removed_refs == [] and again.removed_blobs == []


def test_older_than_removes_only_old_images_beyond_the_newest(store: Store, tmp_path: Path) -> None:
    ages = {"web:a": 40, "web:b": 35, "web:c": 20, "web:d": 10, "web:e": 1}
    disks = {ref: disk(store, tmp_path, seed) for seed, ref in enumerate(ages, 1)}
    for ref, days in ages.items():
        made(store, ref, [disks[ref]], NOW - timedelta(days=days))
    made(store, "web:old-unknown", [disk(store, tmp_path, 9)], None)
    store.tag("web:latest", store.resolve("web:e"))  # one image, two tags
    made(store, "db:1", [disk(store, tmp_path, 10)], NOW - timedelta(days=400))

    report = store.gc(keep_last=1, older_than=parse_age("30d"))
    assert report.removed_refs == ["web:a", "web:b"]
    assert report.kept_refs == {
        "db:1": "the newest",  # the newest of its name, however old
        "web:c": "younger than 30d",
        "web:d": "younger than 30d",
        "web:e": "the newest",
        "web:latest": "the newest",  # two tags of one image are one image
        "web:old-unknown": "its creation time is unknown",
    }
    assert not store.has_blob(disks["web:a"].digest) and store.has_blob(disks["web:c"].digest)
    assert store.fsck().ok

    plain = store.gc(keep_last=2)  # without --older-than, age does not matter beyond the N
    assert plain.removed_refs == ["web:c", "web:old-unknown"]


def test_a_file_outside_the_store_keeps_its_image_tagged(
    store: Store, tmp_path: Path, nightly: dict[str, Image]
) -> None:
    linked = tmp_path / "vm.qcow2"
    nightly["deb:2"].export(linked, link=True)
    report = store.gc(keep_last=2, dry_run=True)
    assert report.removed_refs == ["deb:3"]
    assert report.kept_refs["deb:2"] == "a file outside the store backs onto it"


def test_bad_retention_arguments_are_one_line_errors(store: Store) -> None:
    for args, message in [
        (["--keep-last", "2", "--older-than", "30x"], "give a duration such as 30d"),
        (["--older-than", "30d"], "--older-than needs --keep-last N"),
        (["--keep-last", "0"], "0 is not in the range x>=1"),
    ]:
        done = imagekit("gc", *args, store=store)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(RecipeError, match="keep at least 1"):
        Policy(0)
    assert parse_age("1d12h") == timedelta(days=1, hours=12)
    assert parse_age("2w") == timedelta(weeks=2)


def test_ties_in_creation_time_go_by_the_order_of_tagging() -> None:
    same = datetime(2026, 1, 1, tzinfo=UTC)
    tags = [Tagged(f"n:{i}", "n", f"sha256:{i:064x}", same, i) for i in range(4)]
    chosen = choose(tags, Policy(2, now=same + timedelta(days=1)))
    assert [t.ref for t in chosen.remove] == ["n:0", "n:1"]


# --- a registry -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the user's own credentials is read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def test_prune_deletes_old_manifests_by_digest_and_keeps_bases_and_the_newest(
    store: Store, tmp_path: Path, registry: RunningRegistry
) -> None:
    target = f"oci://{registry.host}/nightly/deb"
    disks = [disk(store, tmp_path, 20 + n) for n in range(4)]
    for number, layer in enumerate(disks, 1):
        made(store, f"deb:{number}", [layer], NOW - timedelta(days=10 - number))
    base = store.image("deb:1")
    top = overlay(store, tmp_path, base.disk)
    made(store, "deb:app", [base.disk, top], NOW, store.resolve("deb:1"))
    key = Store.generate_key(tmp_path / "signer", passphrase="").private
    store.sign("deb:2", key, passphrase="", reference=f"{registry.host}/nightly/deb")
    for tag in ("1", "2", "3", "4", "app"):
        store.push(f"deb:{tag}", f"{target}:{tag}")
    remote = Registry(registry.host, repository="nightly/deb")
    before = sorted(remote.tags("nightly/deb"))
    signature = f"sha256-{store.resolve('deb:2').digest[7:]}.sig"
    assert before == sorted(["1", "2", "3", "4", "app", signature])
    assert sorted(remote.tags("nightly/deb", page=2)) == before  # pages of ?n=2&last=

    dry = imagekit_json("prune", target, "--keep-last", "2", "--dry-run", store=store)
    assert sorted(t for tags in dry["removed"].values() for t in tags) == ["2", "3"]
    assert dry["kept"] == {
        "app": "the newest",
        "4": "one of the 2 newest",
        "1": "a kept image is built on it",
    }
    assert sorted(remote.tags("nightly/deb")) == before

    done = imagekit("prune", target, "--keep-last", "2", store=store)
    assert done.returncode == 0, done.stderr
    assert "deleted 2 image(s) and 1 signature(s) in nightly/deb" in done.stdout
    assert sorted(remote.tags("nightly/deb")) == ["1", "4", "app"]
    for ref in ("deb:2", "deb:3"):
        assert remote.manifest_digest("nightly/deb", store.resolve(ref).digest) is None
    pulled = Store(tmp_path / "pulled")
    pulled.pull(f"{target}:app")  # the kept image still pulls whole, base and all
    assert pulled.fsck().ok


def test_prune_keeps_a_multi_arch_index_as_new_as_its_images_and_the_images_it_names(
    store: Store, tmp_path: Path, registry: RunningRegistry
) -> None:
    """An index records no creation time and names images that may be tagged on their own: it
    ranked oldest (and went), and an image it names could be deleted under it."""
    target = f"oci://{registry.host}/nightly/multi"
    made(store, "multi:old", [disk(store, tmp_path, 60)], NOW - timedelta(days=5))
    made(store, "multi:amd", [disk(store, tmp_path, 61)], NOW - timedelta(days=3))
    made(store, "multi:arm", [disk(store, tmp_path, 62)], NOW - timedelta(days=1))
    store.push("multi:old", f"{target}:old")
    store.push("multi:amd", f"{target}:amd-only")  # also in the index, under a tag of its own
    store.push_index(["multi:amd=amd64", "multi:arm=arm64"], f"{target}:1")

    done = imagekit_json("prune", target, "--keep-last", "1", store=store)
    assert sorted(t for tags in done["removed"].values() for t in tags) == ["old"]
    assert done["kept"] == {"1": "the newest", "amd-only": "a kept multi-arch index names it"}
    remote = Registry(registry.host, repository="nightly/multi")
    assert sorted(remote.tags("nightly/multi")) == ["1", "amd-only"]
    pulled = Store(tmp_path / "pulled")
    for arch in ("amd64", "arm64"):
        pulled.pull(f"{target}:1", arch=arch, tag=f"multi:{arch}")
    assert pulled.fsck().ok


def test_prune_says_in_one_line_when_the_registry_refuses_deletes(
    store: Store, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "no-delete", delete=False) as refusing:
        target = f"oci://{refusing.host}/keep/all"
        for number in (1, 2):
            made(store, f"all:{number}", [disk(store, tmp_path, 40 + number)], NOW)
            store.push(f"all:{number}", f"{target}:{number}")
        done = imagekit("prune", target, "--keep-last", "1", store=store)
        assert done.returncode == FetchError.exit_code
        assert "does not allow deleting manifests (HTTP 405" in done.stderr
        assert "storage.delete.enabled: true" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        remote = Registry(refusing.host, repository="keep/all")
        assert sorted(remote.tags("keep/all")) == ["1", "2"]
