"""Multi-arch push: several stored images, one per architecture, as one OCI index at a tag.

Against the real registry (Debian's docker-registry 2.8 on 127.0.0.1): the tag names an index
skopeo reads with both platforms, a pull for each architecture gets its own image (and chain),
a pull for a missing one is a clear error, and signing the tag signs the index's digest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.core.digest import file_digest
from imagekit.errors import FetchError, RecipeError, RefNotFoundError, SignatureError
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import MEDIA_DISK_QCOW2, MEDIA_INDEX, MEDIA_MANIFEST, oci_arch
from imagekit.oci.registry import Registry
from imagekit.recipe import host_arch
from imagekit.store import Store
from imagekit.verify import keys
from imagekit.verify.trust import TrustPolicy
from tests.conftest import make_qcow2
from tests.registry import RunningRegistry, running_registry, uploads
from tests.test_registry import Chain, make_chain, run_cli


@pytest.fixture(autouse=True)
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the user's own credentials is read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@dataclass(frozen=True)
class TwoArch:
    """One store holding web:1-amd64 (a chain, no arch recorded) and web:1-arm64 (aarch64)."""

    store: Store
    amd: Chain
    arm: Descriptor


def arm_image(store: Store, work: Path) -> Descriptor:
    """A one-layer image whose provenance records aarch64, as an aarch64 recipe's would."""
    disk_file = work / "arm.qcow2"
    make_qcow2(disk_file, seed=21)
    temp = store.new_temp()
    shutil.copyfile(disk_file, temp)
    disk = store.commit_file(temp, file_digest(temp), MEDIA_DISK_QCOW2)
    config = {"name": "web", "version": "1", "arch": "aarch64"}
    manifest = store.write_manifest(config, [disk])
    store.tag("web:1-arm64", manifest)
    return manifest


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> TwoArch:
    root = tmp_path_factory.mktemp("two")
    store = Store(root / "store")
    amd = make_chain(store, root / "work", seed=31)
    store.tag("web:1-amd64", amd.top)
    return TwoArch(store, amd, arm_image(store, root))


def test_two_images_go_up_as_one_index_and_each_arch_pulls_its_own(
    registry: RunningRegistry, two: TwoArch, tmp_path: Path
) -> None:
    target = registry.ref("multi/web", "1")
    pushed = run_cli(
        "push", "web:1-amd64=amd64", "web:1-arm64", target, "--json", store=two.store.root
    )
    assert pushed.returncode == 0, pushed.stderr
    report = json.loads(pushed.stdout)
    assert report["media_type"] == MEDIA_INDEX and report["target"] == target
    assert [(m["ref"], m["architecture"], m["digest"]) for m in report["manifests"]] == [
        ("web:1-amd64", "amd64", two.amd.top.digest),
        ("web:1-arm64", "arm64", two.arm.digest),
    ]
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + target[6:]],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    index = json.loads(raw)
    assert Registry(registry.host).manifest_digest("multi/web", "1") == report["digest"]
    assert index["mediaType"] == MEDIA_INDEX
    assert [(m["mediaType"], m["digest"], m["platform"]) for m in index["manifests"]] == [
        (MEDIA_MANIFEST, two.amd.top.digest, {"architecture": "amd64", "os": "linux"}),
        (MEDIA_MANIFEST, two.arm.digest, {"architecture": "arm64", "os": "linux"}),
    ]
    amd = Store(tmp_path / "amd").pull(target, arch="x86_64")
    assert amd.digest == two.amd.top.digest and amd.ref == "web:1"
    assert amd.store.manifest(amd.digest)["subject"]["digest"] == two.amd.base.digest  # chain
    assert Store(tmp_path / "arm").pull(target, arch="arm64").digest == two.arm.digest
    by_host = {"amd64": two.amd.top.digest, "arm64": two.arm.digest}.get(oci_arch(host_arch()))
    if by_host is not None:  # without --arch, the host's architecture is picked
        assert Store(tmp_path / "host").pull(target).digest == by_host
    with pytest.raises(FetchError, match=r"no image for s390x \(it has: amd64, arm64\)"):
        Store(tmp_path / "none").pull(target, arch="s390x")
    assert not list((tmp_path / "none" / "blobs" / "sha256").iterdir())
    refused = run_cli("pull", target, "--arch", "riscv64", store=tmp_path / "cli")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "no image for riscv64" in refused.stderr
    again = two.store.push_index(["web:1-amd64=x86_64", "web:1-arm64=arm64"], target)
    assert again.digest == report["digest"]  # the same index, byte for byte
    assert all(not r.uploaded and r.manifests_put == 0 for _, r in again.images)


def test_what_cannot_be_an_index_is_refused_before_any_upload(
    registry: RunningRegistry, two: TwoArch
) -> None:
    target = registry.ref("refused/web", "1")
    before = len(uploads(registry.requests()))
    cases = [
        (["web:1-amd64=arm64", "web:1-arm64"], "are both for arm64"),
        (["web:1-amd64", "web:1-arm64"], r"web:1-amd64 records no architecture .*web:1-amd64=ARCH"),
        (["web:1-arm64=amd64"], "was made for aarch64, not amd64"),
    ]
    for images, why in cases:
        with pytest.raises(RecipeError, match=why):
            two.store.push_index(images, target)
    with pytest.raises(RefNotFoundError, match="no image 'web:1-nope'"):
        two.store.push_index(["web:1-arm64", "web:1-nope=amd64"], target)
    by_digest = f"oci://{registry.host}/refused/web@{two.arm.digest}"
    with pytest.raises(RecipeError, match="needs a tag"):
        two.store.push_index(["web:1-arm64"], by_digest)
    assert len(uploads(registry.requests())) == before
    assert Registry(registry.host).manifest_digest("refused/web", "1") is None


def test_signing_the_tag_signs_the_index(
    registry: RunningRegistry, two: TwoArch, tmp_path: Path
) -> None:
    target = registry.ref("signed/web", "1")
    pushed = two.store.push_index(["web:1-amd64=amd64", "web:1-arm64"], target)
    key = keys.generate(tmp_path / "build", "")
    signature = two.store.sign(target, key.private, passphrase="")
    assert signature.digest == pushed.digest  # the index's, as cosign signs a multi-arch tag
    client = Registry(registry.host)
    assert client.manifest_digest("signed/web", f"sha256-{pushed.digest[7:]}.sig") is not None
    trust = TrustPolicy((key.public,), ("*",))
    pulled = Store(tmp_path / "host", trust=trust).pull(target, arch="arm64")
    assert pulled.digest == two.arm.digest
    # The tag moved to an index nobody signed (one architecture only): refused, nothing stored.
    two.store.push_index(["web:1-arm64"], target)
    with pytest.raises(SignatureError, match="is not signed"):
        Store(tmp_path / "host2", trust=trust).pull(target, arch="arm64")
    assert not list((tmp_path / "host2" / "blobs" / "sha256").iterdir())
