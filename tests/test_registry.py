"""push and pull through a real registry (Debian's docker-registry 2.8 on 127.0.0.1).

Images are made through the Layout API, as imagekit's sources and builds make them: a qcow2 base
with an evidence blob, and a customized image whose overlay names the base blob as its backing
file and whose manifest names the base's as its ``subject``. Every count of what crossed the
wire is checked on both sides: the transfer's report and the registry's own access log.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagekit.core.digest import file_digest, hexpart
from imagekit.errors import FetchError, RecipeError, UnsafeImageError, VerificationError
from imagekit.oci import download as blob_download
from imagekit.oci import transfer
from imagekit.oci.auth import Credentials, find_credentials, parse_challenge
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import (
    MEDIA_DISK_QCOW2,
    MEDIA_EVIDENCE_CHECKSUM,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    PARENT_ANNOTATION,
    TITLE_ANNOTATION,
)
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.sources.registry import RegistryPull, local_ref
from imagekit.store import Store
from tests.conftest import Upstream, cached_bytes, make_qcow2
from tests.events import Events
from tests.registry import (
    RunningRegistry,
    TokenService,
    htpasswd,
    running_registry,
    uploads,
)

USER, PASSWORD = "builder", "s3cret-Pa55word"


@pytest.fixture(autouse=True)
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing of the user's own credentials is read; REGISTRY_AUTH_FILE is a test file."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))
    return home / "auth.json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry that wants a login (htpasswd, Basic auth)."""
    directory = tmp_path_factory.mktemp("locked")
    auth = {
        "htpasswd": {"realm": "imagekit-test", "path": str(htpasswd(directory, USER, PASSWORD))}
    }
    with running_registry(directory, auth=auth) as running:
        yield running


@dataclass(frozen=True)
class Chain:
    """A base image and an image customized from it, both tagged in ``store``."""

    store: Store
    base: Descriptor  # manifests
    top: Descriptor
    base_disk: Descriptor
    overlay: Descriptor


def make_chain(store: Store, work: Path, *, seed: int = 1, size: int = 4 << 20) -> Chain:
    """base:1 (qcow2 + checksum evidence) and web:1 (a qcow2 overlay on it, 1 MiB written)."""
    work.mkdir(parents=True, exist_ok=True)
    base_file = work / f"base-{seed}.qcow2"
    make_qcow2(base_file, size=size, seed=seed)
    temp = store.new_temp()
    shutil.copyfile(base_file, temp)
    disk = store.commit_file(temp, file_digest(temp), MEDIA_DISK_QCOW2)
    evidence = store.add_bytes(
        f"SHA256 (base) = {hexpart(disk.digest)}\n".encode(), MEDIA_EVIDENCE_CHECKSUM
    )
    config = {"name": "base", "version": "1", "source": {"kind": "test", "seed": seed}}
    base = store.write_manifest(config, [disk, evidence])
    store.tag("base:1", base)
    overlay = overlay_on(store, disk, work / f"overlay-{seed}")
    top = store.write_manifest(
        {"name": "web", "version": "1", "steps": [{"step": {"seed": seed}}]},
        [disk, overlay, evidence],
        subject=base,
    )
    store.tag("web:1", top)
    return Chain(store, base, top, disk, overlay)


def overlay_on(
    store: Store, parent: Descriptor, work: Path, backing: str | None = None
) -> Descriptor:
    """A qcow2 overlay naming ``parent`` by blob name (as build layers do), 1 MiB written.

    With ``backing`` the header names that path instead (a hostile layer; nothing written).
    """
    work.mkdir()
    (work / hexpart(parent.digest)).symlink_to(store.blob_path(parent.digest))
    overlay = work / "layer.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2"]
    if backing is None:
        subprocess.run([*create, "-b", hexpart(parent.digest), str(overlay)], check=True)
        write = ["qemu-io", "-c", "write -P 0xab 0 1M", str(overlay)]
        subprocess.run(write, check=True, capture_output=True)
    else:
        subprocess.run([*create, "-u", "-b", backing, str(overlay), "4M"], check=True)
    temp = store.new_temp()
    shutil.copyfile(overlay, temp)
    annotations = {PARENT_ANNOTATION: parent.digest}
    return store.commit_file(temp, file_digest(temp), MEDIA_DISK_QCOW2, annotations=annotations)


def stored(store: Store) -> set[str]:
    return {"sha256:" + p.name for p in store.blobs_dir.iterdir()}


# --- push and pull ---------------------------------------------------------------------------


def test_push_then_pull_into_an_empty_store_gives_the_same_image(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    events = Events()
    report = chain.store.push("web:1", registry.ref("images/web"), progress=events)
    assert report.digest == chain.top.digest
    assert len(report.uploaded) == 5 and report.skipped == [] and report.manifests_put == 2
    assert any(e.stage == "push" and e.done == e.total == chain.overlay.size for e in events.seen)

    other = Store(tmp_path / "b")
    image = other.pull(registry.ref("images/web"))
    original = chain.store.image("web:1")
    assert image.ref == "web:1" and not image.cached
    assert image.digest == original.digest and image.manifest == original.manifest
    assert [d.digest for d in image.disks] == [chain.base_disk.digest, chain.overlay.digest]
    assert image.provenance == original.provenance
    assert other.has_blob(chain.base.digest)  # the base's manifest (subject) came along
    assert other.image(chain.base.digest).provenance["source"] == {"kind": "test", "seed": 1}
    assert stored(other) == stored(chain.store)
    assert other.fsck().ok

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--backing-chain", "--output=json", str(image.path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert [i["filename"] for i in info] == [
        str(image.path),
        str(other.blob_path(chain.base_disk.digest)),
    ]
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image.path), str(original.path)],
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_layers_carry_a_title_the_overlay_names_as_its_backing_file(tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    layers = chain.store.manifest(chain.top.digest)["layers"]
    titles = [layer.get("annotations", {}).get(TITLE_ANNOTATION) for layer in layers]
    assert titles == [hexpart(chain.base_disk.digest), hexpart(chain.overlay.digest), None]
    backing = subprocess.run(
        ["qemu-img", "info", "--output=json", str(chain.store.blob_path(chain.overlay.digest))],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(backing.stdout)["backing-filename"] == titles[0]


def test_a_second_push_uploads_nothing(registry: RunningRegistry, tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    target = registry.ref("images/again")
    chain.store.push("web:1", target)
    mark = registry.mark()
    report = chain.store.push("web:1", target)
    assert report.uploaded == [] and report.uploaded_bytes == 0 and report.manifests_put == 0
    assert len(report.skipped) == 5
    assert uploads(registry.since(mark)) == []


def test_an_upload_is_patches_then_a_put_that_carries_the_last_chunk(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    mark = registry.mark()
    chain.store.push("base:1", registry.ref("images/shape", "base"))
    asked = registry.since(mark)
    written = uploads(asked)
    # Its blobs had to be sent, so the manifest cannot be there yet: no HEAD asks.
    assert not [r for r in asked if r.method == "HEAD" and "/manifests/" in r.path]
    # Three blobs of one chunk each (disk, evidence, config): POST + PUT apiece, as curl would.
    assert sorted(r.method for r in written if "/blobs/" in r.path) == ["POST"] * 3 + ["PUT"] * 3
    finished = [r.path for r in written if r.method == "PUT" and "/blobs/" in r.path]
    assert all("digest=" in path for path in finished)

    chunk = 256 << 10
    mark = registry.mark()
    report = chain.store.push("web:1", registry.ref("images/shape"), chunk_size=chunk)
    written = uploads(registry.since(mark))
    chunks = -(-chain.overlay.size // chunk)
    assert chunks > 2
    # The overlay: a PATCH per chunk but the last, which is the body of the closing PUT.
    assert [r.method for r in written].count("PATCH") == chunks - 1
    assert [r.method for r in written if "/blobs/" in r.path].count("PUT") == 2  # + top config
    assert report.uploaded_bytes == chain.overlay.size + sum(
        d.size for d in [Descriptor.from_json(chain.store.manifest(chain.top.digest)["config"])]
    )
    assert Store(tmp_path / "b").pull(registry.ref("images/shape")).digest == chain.top.digest


def test_a_customized_image_uploads_only_its_overlay(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    chain.store.push("base:1", registry.ref("images/base"))
    mark = registry.mark()
    report = chain.store.push("web:1", registry.ref("images/base", "web"))
    top_config = chain.store.manifest(chain.top.digest)["config"]["digest"]
    assert sorted(report.uploaded) == sorted([chain.overlay.digest, top_config])
    assert (
        report.uploaded_bytes
        == chain.overlay.size + chain.store.blob_path(top_config).stat().st_size
    )
    assert chain.base_disk.digest in report.skipped
    written = uploads(registry.since(mark))
    assert [r.method for r in written if r.method == "POST"] == ["POST", "POST"]  # 2 uploads
    assert [r.path.rsplit("/", 1)[-1] for r in written if "/manifests/" in r.path] == ["web"]

    # Another repository of the same registry: the base is mounted, not sent again.
    mark = registry.mark()
    moved = chain.store.push("web:1", registry.ref("images/elsewhere"))
    assert chain.base_disk.digest in moved.mounted and moved.uploaded == []
    mounts = [r for r in registry.since(mark) if "mount=" in r.path]
    assert mounts and all(r.status == 201 for r in mounts)
    assert not any(r.method == "PATCH" for r in registry.since(mark))


def test_a_pull_fetches_only_the_blobs_it_lacks(registry: RunningRegistry, tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    chain.store.push("web:1", registry.ref("images/lacks"))
    chain.store.push("base:1", registry.ref("images/lacks", "base"))
    other = Store(tmp_path / "b")
    first = other.pull_registry(registry.ref("images/lacks", "base"), RegistryPull())
    assert chain.base_disk.digest in first.report.fetched
    mark = registry.mark()
    second = other.pull_registry(registry.ref("images/lacks"), RegistryPull())
    top_config = chain.store.manifest(chain.top.digest)["config"]["digest"]
    assert sorted(second.report.fetched) == sorted([chain.overlay.digest, top_config])
    gets = [r.path for r in registry.since(mark) if r.method == "GET" and "/blobs/" in r.path]
    assert sorted(p.rsplit("/", 1)[-1] for p in gets) == sorted(second.report.fetched)

    again = other.pull(registry.ref("images/lacks"))
    assert again.cached and again.digest == chain.top.digest


def test_a_pull_fetches_a_chains_blobs_in_parallel_three_at_a_time(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    chain.store.push("web:1", registry.ref("images/parallel"))
    first_three = threading.Barrier(transfer.PARALLEL, timeout=60)  # broken unless 3 at once
    lock = threading.Lock()
    calls = active = peak = 0
    original = blob_download.download

    def download(*args: Any, **kwargs: Any) -> blob_download.Partial | None:
        nonlocal calls, active, peak
        with lock:
            calls, active = calls + 1, active + 1
            peak, nth = max(peak, active), calls
        try:
            if nth <= transfer.PARALLEL:
                first_three.wait()
            return original(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(blob_download, "download", download)
    pulled = Store(tmp_path / "b").pull_registry(registry.ref("images/parallel"), RegistryPull())
    assert len(pulled.report.fetched) == calls == 5  # two configs, two disks, the evidence
    assert peak == transfer.PARALLEL == 3
    assert pulled.image.digest == chain.top.digest


def test_a_large_layer_is_written_around_the_page_cache(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT")
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work", seed=9, size=40 << 20)
    chain.store.push("base:1", registry.ref("images/large"))
    other = Store(tmp_path / "b")
    image = other.pull(registry.ref("images/large"))
    blob = other.blob_path(chain.base_disk.digest)
    assert chain.base_disk.size > 32 << 20
    assert cached_bytes(blob) < 1 << 20  # the header and tables the checks read, not 40 MiB
    assert file_digest(blob) == chain.base_disk.digest
    assert image.digest == chain.base.digest and other.fsck().ok


@pytest.mark.parametrize("direct", ["used", "refused"])
def test_a_large_blob_with_an_unaligned_tail_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str
) -> None:
    data = random.Random(3).randbytes((33 << 20) + 1234)
    desc = Descriptor(MEDIA_DISK_QCOW2, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    path = tmp_path / "blob.part"
    if direct == "refused":  # opened, then every write refused, as some filesystems do
        monkeypatch.setattr(blob_download, "_open_direct", lambda p: os.open(p, os.O_RDONLY))
    part = blob_download.Partial(path, desc)
    try:
        body = io.BytesIO(data)
        while part.fill(body.readinto):
            pass
        part.finish()
    finally:
        part.close()
    assert path.read_bytes() == data


def test_pull_by_digest_and_the_local_ref(registry: RunningRegistry, tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    chain.store.push("web:1", registry.ref("team/images/web", "2"))
    other = Store(tmp_path / "b")
    by_digest = f"oci://{registry.host}/team/images/web@{chain.top.digest}"
    image = other.pull(by_digest)
    assert image.ref == f"web:sha256-{hexpart(chain.top.digest)[:12]}"
    assert other.pull(registry.ref("team/images/web", "2"), tag="mine:here").ref == "mine:here"
    assert local_ref(RegistryRef.parse("oci://h:5000/a/b/web:3")) == "web:3"
    with pytest.raises(FetchError, match="no manifest nothere"):
        other.pull(registry.ref("team/images/web", "nothere"))


def test_a_corrupted_blob_in_the_registry_is_refused(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work", seed=7)
    chain.store.push("web:1", registry.ref("images/corrupt"))
    data = registry.blob_data(chain.overlay.digest)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    other = Store(tmp_path / "b")
    with pytest.raises(VerificationError, match=f"blob {chain.overlay.digest} .* corrupt"):
        other.pull(registry.ref("images/corrupt"))
    assert list(other.blobs_dir.iterdir()) == []
    assert not list(other.tmp_dir.glob(f"oci-{hexpart(chain.overlay.digest)}*"))
    assert other.refs() == []


def test_a_blob_longer_than_its_descriptor_is_refused_as_it_arrives(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work", seed=8)
    chain.store.push("web:1", registry.ref("images/longer"))
    data = registry.blob_data(chain.base_disk.digest)
    data.write_bytes(data.read_bytes() + b"\0" * (3 << 20))  # served whole, 3 MiB too long
    other = Store(tmp_path / "b")
    with pytest.raises(VerificationError, match=f"blob {chain.base_disk.digest} is longer"):
        other.pull(registry.ref("images/longer"))
    assert list(other.blobs_dir.iterdir()) == [] and other.refs() == []
    assert not list(other.tmp_dir.glob(f"oci-{hexpart(chain.base_disk.digest)}*"))


def test_a_layer_naming_another_backing_file_is_refused(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "a")
    chain = make_chain(store, tmp_path / "work")
    hostile = overlay_on(store, chain.base_disk, tmp_path / "hostile", backing="/etc/passwd")
    manifest = store.write_manifest({"name": "bad"}, [chain.base_disk, hostile], subject=chain.base)
    store.tag("bad:1", manifest)
    store.push("bad:1", registry.ref("images/bad"))
    other = Store(tmp_path / "b")
    with pytest.raises(UnsafeImageError, match="/etc/passwd"):
        other.pull(registry.ref("images/bad"))
    assert not other.has_blob(hostile.digest)
    assert not list(other.tmp_dir.glob("oci-*"))
    assert other.refs() == []


def test_a_manifest_that_is_not_an_imagekit_image_is_refused(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "a")
    config = store.add_json({"architecture": "amd64"}, "application/vnd.oci.image.config.v1+json")
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config.to_json(), "layers": []}
    ).encode()
    digest = store.add_bytes(body, MEDIA_MANIFEST)
    store.tag("container:1", digest)
    store.push("container:1", registry.ref("images/container"))
    with pytest.raises(RecipeError, match="not an imagekit image"):
        Store(tmp_path / "b").pull(registry.ref("images/container"))


def test_a_multi_arch_tag_pulls_the_host_architecture(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    amd = make_chain(Store(tmp_path / "a"), tmp_path / "w1", seed=11)
    arm = make_chain(Store(tmp_path / "b"), tmp_path / "w2", seed=12)
    for chain in (amd, arm):
        chain.store.push("web:1", f"oci://{registry.host}/images/multi@{chain.top.digest}")
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {**c.top.to_json(), "platform": {"architecture": arch, "os": "linux"}}
            for c, arch in ((amd, "amd64"), (arm, "arm64"))
        ],
    }
    client = Registry(registry.host)
    client.put_manifest("images/multi", "1", json.dumps(index).encode(), MEDIA_INDEX)
    target = registry.ref("images/multi")
    assert Store(tmp_path / "c").pull(target, arch="x86_64").digest == amd.top.digest
    assert Store(tmp_path / "d").pull(target, arch="arm64").digest == arm.top.digest
    with pytest.raises(FetchError, match=r"no image for s390x \(it has: amd64, arm64\)"):
        Store(tmp_path / "e").pull(target, arch="s390x")


def test_provenance_and_evidence_of_a_signed_pull_travel(
    registry: RunningRegistry, upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    filename = "Test-Cloud-Base-Generic-1-1.2.x86_64.qcow2"
    upstream.publish(filename, image_bytes)
    first = Store(tmp_path / "a")
    pulled = first.pull(str(upstream.recipe(filename)))
    first.push("test-cloud:1", registry.ref("images/test-cloud"))
    host = Store(tmp_path / "b")
    image = host.pull(registry.ref("images/test-cloud"))
    assert image.digest == pulled.digest
    assert image.verification == "signed"
    assert image.provenance["verification"]["signer"] == pulled.provenance["verification"]["signer"]
    checksum = image.provenance["verification"]["checksum_file"]
    assert host.read_blob(checksum) == first.read_blob(checksum)
    shown = run_cli("inspect", "test-cloud:1", store=host.root)
    assert "signed by" in shown.stdout and upstream.server.url("/pub/") in shown.stdout


# --- the command line ------------------------------------------------------------------------


def run_cli(
    *args: str, store: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    prefix = ["--store", str(store)] if store else []
    return subprocess.run(
        [sys.executable, "-m", "imagekit", command, *prefix, *rest],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env=os.environ.copy(),
    )


def test_cli_push_and_pull_json(registry: RunningRegistry, tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    pushed = run_cli(
        "push", "web:1", f"oci://{registry.host}/cli/web", "--json", store=chain.store.root
    )
    assert pushed.returncode == 0, pushed.stderr
    report = json.loads(pushed.stdout)
    assert report["target"] == f"oci://{registry.host}/cli/web:1"  # the local ref's tag
    assert report["digest"] == chain.top.digest and report["uploaded"] == 5
    pulled = run_cli("pull", registry.ref("cli/web"), "--json", store=tmp_path / "b")
    assert pulled.returncode == 0, pulled.stderr
    summary = json.loads(pulled.stdout)
    assert summary["digest"] == chain.top.digest and summary["ref"] == "web:1"
    assert summary["image"] == chain.overlay.digest and summary["cached"] is False
    refused = run_cli("pull", registry.ref("cli/web"), "--offline", store=tmp_path / "b")
    assert refused.returncode == 2 and "offline" in refused.stderr


_PULL_THEN_LIST_CRYPTOGRAPHY = """
import sys
from imagekit.cli import main
try:
    main()
finally:
    print("cryptography" in sys.modules, file=sys.stderr)
"""


def test_a_pull_without_trust_does_not_load_cryptography(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Only making or checking a signature needs cryptography (~0.1 s of start-up); a pull no
    trust rule covers keeps the image's signatures without checking them, so it must not."""
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    files = chain.store.generate_key(tmp_path / "k", passphrase="")
    chain.store.sign("web:1", files.private, passphrase="")
    chain.store.push("web:1", registry.ref("lazy/web"))
    for _ in ("fetched", "cached"):
        argv = ["pull", registry.ref("lazy/web"), "--store", str(tmp_path / "b"), "--json"]
        done = subprocess.run(
            [sys.executable, "-c", _PULL_THEN_LIST_CRYPTOGRAPHY, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1] == "False", done.stderr
    kept = Store(tmp_path / "b").signatures("web:1")
    assert [s.digest for s in kept] == [chain.top.digest]  # kept, unchecked: no trusted keys


_PUSH_THEN_LIST_MODULES = """
import sys
from imagekit.cli import main
try:
    main()
finally:
    print(sorted(m for m in sys.modules if m.startswith(("imagekit.recipe", "imagekit.export"))),
          file=sys.stderr)
"""


def test_a_push_loads_neither_the_recipe_loader_nor_the_export_code(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Start-up is a push's fixed cost against curl (benchmarks/oci.py): the stages a push does
    not run stay unloaded."""
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    argv = ["push", "web:1", registry.ref("lazy/push"), "--store", str(chain.store.root), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", _PUSH_THEN_LIST_MODULES, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["uploaded"] == 5
    assert done.stderr.splitlines()[-1] == "[]", done.stderr


# --- credentials -----------------------------------------------------------------------------


def test_a_push_without_credentials_fails_clearly(locked: RunningRegistry, tmp_path: Path) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    result = run_cli("push", "web:1", locked.ref("private/web"), store=chain.store.root)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert "requires a login" in result.stderr and f"imagekit login {locked.host}" in result.stderr
    assert not uploads([r for r in locked.requests() if r.status < 400 and "private/web" in r.path])


def test_login_then_push_and_pull(
    locked: RunningRegistry, tmp_path: Path, no_user_credentials: Path
) -> None:
    wrong = run_cli("login", locked.host, "-u", USER, "--password-stdin", stdin="not-it\n")
    assert wrong.returncode == 3 and "refused the credentials" in wrong.stderr
    assert "not-it" not in wrong.stderr + wrong.stdout and not no_user_credentials.exists()

    done = run_cli("login", locked.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert str(no_user_credentials) in done.stdout and PASSWORD not in done.stdout
    assert no_user_credentials.stat().st_mode & 0o777 == 0o600
    assert json.loads(no_user_credentials.read_text())["auths"][locked.host]["auth"]

    no_user = run_cli("login", locked.host, "--password-stdin", stdin=PASSWORD + "\n")
    assert no_user.returncode == 2 and "needs --username" in no_user.stderr

    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    pushed = run_cli("push", "web:1", locked.ref("private/web"), "--json", store=chain.store.root)
    assert pushed.returncode == 0, pushed.stderr
    assert PASSWORD not in pushed.stdout + pushed.stderr
    assert Store(tmp_path / "b").pull(locked.ref("private/web")).digest == chain.top.digest


def test_docker_config_and_credential_helpers_are_read(
    locked: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    docker = Path(os.environ["DOCKER_CONFIG"])
    docker.mkdir()
    encoded = __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(
        json.dumps({"auths": {f"http://{locked.host}/v1/": {"auth": encoded}}})
    )
    assert chain.store.push("web:1", locked.ref("docker/web")).digest == chain.top.digest

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imagekit-test"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'[ "$server" = "{locked.host}" ] || exit 1\n'
        f'echo \'{{"ServerURL": "{locked.host}", "Username": "{USER}", "Secret": "{PASSWORD}"}}\'\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (docker / "config.json").write_text(json.dumps({"credHelpers": {locked.host: "imagekit-test"}}))
    found = find_credentials(locked.host)
    assert found is not None and found.source == "docker-credential-imagekit-test"
    assert PASSWORD not in repr(found)
    assert chain.store.push("web:1", locked.ref("helper/web")).digest == chain.top.digest
    (docker / "config.json").write_text(json.dumps({"credHelpers": {locked.host: "absent"}}))
    with pytest.raises(FetchError, match="docker-credential-absent, which is not installed"):
        chain.store.push("web:1", locked.ref("helper/web"))


def test_the_bearer_token_flow(tmp_path: Path, no_user_credentials: Path) -> None:
    with (
        TokenService(tmp_path, USER, PASSWORD) as tokens,
        running_registry(tmp_path / "registry", auth=tokens.registry_auth()) as running,
    ):
        chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
        with pytest.raises(FetchError, match="requires a login") as refused:
            chain.store.push("web:1", running.ref("tokens/web"))
        assert "\n" not in str(refused.value)
        no_user_credentials.write_text(
            json.dumps({"auths": {running.host: {"username": USER, "password": PASSWORD}}})
        )
        assert chain.store.push("web:1", running.ref("tokens/web")).digest == chain.top.digest
        assert tokens.issued >= 1
        image = Store(tmp_path / "b").pull(running.ref("tokens/web"))
        assert image.digest == chain.top.digest
        with pytest.raises(FetchError, match="insufficient scope"):
            chain.store.push("web:1", running.ref("readonly/web"))
        no_user_credentials.write_text(
            json.dumps({"auths": {running.host: {"username": USER, "password": "wrong"}}})
        )
        with pytest.raises(FetchError, match=f"refused the credentials from {no_user_credentials}"):
            Store(tmp_path / "c").pull(running.ref("tokens/web"))


def test_credentials_lookup_and_parsing(tmp_path: Path, no_user_credentials: Path) -> None:
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    runtime.parent.mkdir(parents=True)
    runtime.write_text(json.dumps({"auths": {"reg.example": {"auth": "cnVudGltZTpwdw=="}}}))
    found = find_credentials("reg.example")
    assert found is not None and found.username == "runtime" and found.source == str(runtime)
    no_user_credentials.write_text(
        json.dumps({"auths": {"reg.example/team": {"username": "team", "password": "x"}}})
    )
    assert getattr(find_credentials("reg.example", "team/web"), "username", None) == "team"
    assert getattr(find_credentials("reg.example", "other/web"), "username", None) == "runtime"
    assert find_credentials("elsewhere.example") is None
    no_user_credentials.write_text("{not json")
    with pytest.raises(FetchError, match="not valid JSON"):
        find_credentials("reg.example")
    assert "pw" not in repr(Credentials("u", "pw"))
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a:pull",
    }


# --- references and plain http ----------------------------------------------------------------


def test_registry_references() -> None:
    ref = RegistryRef.parse("oci://registry.example:5000/images/web:1")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (
        "registry.example:5000",
        "images/web",
        "1",
        None,
    )
    assert ref.reference == "1" and str(ref) == "oci://registry.example:5000/images/web:1"
    digest = "sha256:" + "a" * 64
    pinned = RegistryRef.parse(f"oci://[::1]:5000/web@{digest}")
    assert pinned.host == "[::1]:5000" and pinned.reference == digest and pinned.tag is None
    assert RegistryRef.parse("oci://localhost/web").reference == "latest"
    for bad in (
        "registry.example/web",
        "oci://registry.example",
        "oci://r.example/Web:1",
        "oci://r.example/web:-x",
        "oci://r.example/web@sha256:abc",
        "oci://bad_host/web",
    ):
        with pytest.raises(RecipeError):
            RegistryRef.parse(bad)


def test_plain_http_only_for_loopback_or_when_insecure() -> None:
    assert Registry("127.0.0.1:5000").base == "http://127.0.0.1:5000/v2/"
    assert Registry("localhost:5000").base == "http://localhost:5000/v2/"
    assert Registry("[::1]:5000").base == "http://[::1]:5000/v2/"
    assert Registry("registry.example").base == "https://registry.example/v2/"
    assert Registry("registry.example", insecure=True).base == "http://registry.example/v2/"


# --- skopeo reads what imagekit writes, both ways ---------------------------------------------


def test_skopeo_copies_a_pushed_image_into_an_oci_directory(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    chain.store.push("web:1", registry.ref("skopeo/web"))
    out = tmp_path / "oci-dir"
    copied = subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{registry.host}/skopeo/web:1",
            f"oci:{out}:web",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copied.returncode == 0, copied.stderr
    blobs = {"sha256:" + p.name for p in (out / "blobs" / "sha256").iterdir()}
    manifest = chain.store.manifest(chain.top.digest)
    wanted = {
        chain.top.digest,
        manifest["config"]["digest"],
        *(d["digest"] for d in manifest["layers"]),
    }
    assert blobs == wanted
    for digest in blobs:
        assert (out / "blobs" / "sha256" / hexpart(digest)).read_bytes() == chain.store.blob_path(
            digest
        ).read_bytes()
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [chain.top.digest]


def test_skopeo_copies_the_local_store_to_the_registry(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    chain = make_chain(Store(tmp_path / "a"), tmp_path / "work")
    copied = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci:{chain.store.root}:base:1",
            f"docker://{registry.host}/skopeo/base:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copied.returncode == 0, copied.stderr
    assert Registry(registry.host).manifest_digest("skopeo/base", "1") == chain.base.digest
    image = Store(tmp_path / "b").pull(registry.ref("skopeo/base"))
    assert image.digest == chain.base.digest and image.disk_digest == chain.base_disk.digest
