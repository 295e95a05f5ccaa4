"""imagekit build --all: a folder of recipes against the loopback mirror, a real registry and
the real appliance (one step launch; the rest are verified pulls and recipes on recipes).

One module-scoped night is shared: the first run builds and pushes everything, and each test
reads a later run of the same store (or a second builder's fresh store) and counts launches.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.errors import RecipeError
from imagekit.guest.appliance import MEMSIZE_MIB
from imagekit.nightly import NightlyOptions, NightlyReport, build_all, junit_xml, load_folder
from imagekit.nightly.memory import QEMU_OVERHEAD, MemoryBudget, available_memory, memory_need
from imagekit.recipe import load_recipe_file
from imagekit.store import Store
from imagekit.verify import keys
from tests import guestimage
from tests.conftest import REPO, make_qcow2
from tests.gpgtools import TestKey, clearsign
from tests.guestimage import GuestImage
from tests.httpserver import LoopbackServer
from tests.registry import RunningRegistry, running_registry

pytestmark = pytest.mark.guestfs

guest_image = guestimage.guest_image  # the session fixture, until conftest.py registers it

IMAGEKIT = [sys.executable, "-m", "imagekit"]
STEP = '[[customize]]\nhostname = "delta1"\n'


def publish(server: LoopbackServer, key: TestKey, folder: str, data: bytes) -> None:
    """``/folder/disk.qcow2`` and its clearsigned CHECKSUM (a new compose: call it again)."""
    digest = hashlib.sha256(data).hexdigest()
    text = f"# disk.qcow2: {len(data)} bytes\nSHA256 (disk.qcow2) = {digest}\n"
    server.replace(f"/{folder}/disk.qcow2", data)
    server.replace(f"/{folder}/CHECKSUM", clearsign(key, text.encode()))


def http_recipe(directory: Path, server: LoopbackServer, name: str, folder: str) -> None:
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\nversion = "1"\narch = "x86_64"\n[source]\nkind = "http"\n'
        f'url = "{server.url(f"/{folder}/disk.qcow2")}"\n'
        f'checksum_url = "{server.url(f"/{folder}/CHECKSUM")}"\nkeys = ["upstream.asc"]\n'
    )


def derived_recipe(directory: Path, name: str, base: str, steps: str = "") -> None:
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\nversion = "1"\narch = "x86_64"\n[source]\nkind = "recipe"\n'
        f'recipe = "{base}"\n' + steps
    )


@dataclass
class Night:
    directory: Path
    server: LoopbackServer
    key: TestKey
    registry: RunningRegistry
    store: Store
    options: NightlyOptions
    first: NightlyReport


def statuses(report: NightlyReport) -> dict[str, str]:
    return {r.recipe: r.status for r in report.results}


@pytest.fixture(scope="module")
def night(
    tmp_path_factory: pytest.TempPathFactory, guest_image: GuestImage, signing_key: TestKey
) -> Iterator[Night]:
    work = tmp_path_factory.mktemp("night")
    directory = work / "recipes"
    directory.mkdir()
    (directory / "upstream.asc").write_bytes(signing_key.public_key.read_bytes())
    cosign = keys.generate(work / "cosign", "")
    with LoopbackServer() as server, running_registry(work / "registry") as registry:
        publish(server, signing_key, "alpha", guest_image.path.read_bytes())
        for seed, folder in enumerate(("bravo", "charlie", "broken"), 2):
            publish(server, signing_key, folder, make_qcow2(work / f"{folder}.qcow2", seed=seed))
        server.replace("/broken/disk.qcow2", b"")  # the checksum file lies about it
        for name in ("alpha", "bravo", "charlie", "broken"):
            http_recipe(directory, server, name, name)
        derived_recipe(directory, "delta", "alpha.toml", STEP)  # the one step: one launch
        derived_recipe(directory, "echo", "delta.toml")
        derived_recipe(directory, "foxtrot", "bravo.toml")
        derived_recipe(directory, "golf", "broken.toml")
        store = Store(work / "store")
        options = NightlyOptions(
            jobs=2, push=f"oci://{registry.host}/nightly", sign_key=cosign.private
        )
        first = build_all(store, directory, options)
        yield Night(directory, server, signing_key, registry, store, options, first)


EXPECTED = {
    "alpha:1": "built",
    "bravo:1": "built",
    "charlie:1": "built",
    "broken:1": "failed",
    "delta:1": "built",
    "echo:1": "built",
    "foxtrot:1": "built",
    "golf:1": "skipped",
}


def test_first_night_builds_everything_but_the_broken_recipe(night: Night) -> None:
    report = night.first
    assert statuses(report) == EXPECTED
    by_name = {r.recipe: r for r in report.results}
    order = [r.recipe for r in report.results]
    assert order.index("alpha:1") < order.index("delta:1") < order.index("echo:1")
    assert sum(r.launches for r in report.results) == 1  # delta's step; echo reuses its layer
    assert by_name["delta:1"].layers_built == 1
    assert by_name["echo:1"].layers_built == 0 and by_name["echo:1"].launches == 0
    assert by_name["golf:1"].skipped_because == "broken:1 failed"
    broken = by_name["broken:1"]
    assert broken.exit_code == 3 and "disk.qcow2" in (broken.error or "")
    assert report.exit_code == 3  # the broken recipe's, as its own build would exit
    alpha = by_name["alpha:1"]
    assert alpha.upstream is not None and alpha.upstream["filename"] == "disk.qcow2"
    assert alpha.upstream["verification"] == "signed"
    assert alpha.bytes_downloaded > 0 and alpha.bytes_stored > 0
    assert alpha.bytes_pushed > 0 and len(alpha.pushed_to) == 2
    assert all(s["signer"] is not None or s["problem"] for s in alpha.signatures)
    assert alpha.signatures, "signed with --sign-key"
    # The whole report is JSON, and says the same.
    data = json.loads(json.dumps(report.to_json()))
    assert data["counts"] == {"built": 6, "unchanged": 0, "published": 0, "failed": 1, "skipped": 1}


def test_junit_has_one_suite_per_recipe_with_failures_and_skips(night: Night) -> None:
    root = ET.fromstring(junit_xml(night.first))
    assert root.tag == "testsuites"
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert set(suites) == set(EXPECTED)
    delta = [case.get("name") for case in suites["delta:1"].findall("testcase")]
    assert delta[0] == "resolve" and "step 1" in delta and delta[-1] == "push"
    assert "fetch" in delta  # alpha's fetch, cached, under delta's chain
    failure = suites["broken:1"].find("testcase/failure")
    assert failure is not None and "disk.qcow2" in (failure.get("message") or "")
    assert suites["broken:1"].get("failures") == "1"
    assert suites["golf:1"].find("testcase/skipped") is not None
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    for case in root.iter("testcase"):
        float(case.get("time") or "x")
        assert case.get("classname")


def test_second_night_is_unchanged_with_no_launch_and_no_image_request(night: Night) -> None:
    mark = len(night.server.log())
    started = time.monotonic()
    report = build_all(night.store, night.directory, NightlyOptions(jobs=2))
    seconds = time.monotonic() - started
    expected = {**EXPECTED, **{k: "unchanged" for k, v in EXPECTED.items() if v == "built"}}
    assert statuses(report) == expected
    assert sum(r.launches for r in report.results) == 0
    assert seconds < len(report.results) * 0.5, seconds
    asked = [entry.path for entry in night.server.log()[mark:]]
    assert [path for path in asked if not path.startswith("/broken/")] == []  # metadata TTL


def test_the_cli_reports_a_warm_night_in_json_and_junit(night: Night, tmp_path: Path) -> None:
    report, junit = tmp_path / "r.json", tmp_path / "junit.xml"
    outputs = ["-j", "2", "--report", str(report), "--junit", str(junit)]
    done = subprocess.run(
        [
            *IMAGEKIT,
            "build",
            "--all",
            str(night.directory),
            "--store",
            str(night.store.root),
            *outputs,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    data = json.loads(report.read_text())
    assert data["counts"]["unchanged"] == 6 and data["launches"] == 0
    assert {r["recipe"]: r["status"] for r in data["recipes"]}["golf:1"] == "skipped", data
    assert ET.parse(junit).getroot().get("failures") == "1"
    assert "skipped-because: broken:1 failed" in done.stdout
    assert "imagekit: golf:1: skipped-because: broken:1 failed" in done.stderr  # plain lines


def test_a_new_compose_rebuilds_exactly_its_recipes_and_dependants(
    night: Night, tmp_path: Path
) -> None:
    publish(night.server, night.key, "bravo", make_qcow2(tmp_path / "new.qcow2", seed=99))
    options = NightlyOptions(
        jobs=2, push=night.options.push, sign_key=night.options.sign_key, network={"refresh": True}
    )
    mark = len(night.server.log())
    report = build_all(night.store, night.directory, options)
    got = statuses(report)
    assert {k for k, v in got.items() if v == "built"} == {"bravo:1", "foxtrot:1"}
    assert got["alpha:1"] == got["delta:1"] == got["echo:1"] == got["charlie:1"] == "unchanged"
    assert sum(r.launches for r in report.results) == 0
    asked = [e.path for e in night.server.log()[mark:] if not e.path.startswith("/broken/")]
    images = [path for path in asked if path.endswith("disk.qcow2")]
    assert images == ["/bravo/disk.qcow2"]  # the one new image; the rest only metadata
    foxtrot = next(r for r in report.results if r.recipe == "foxtrot:1")
    assert night.store.image("foxtrot:1").disk_digest == night.store.image("bravo:1").disk_digest
    assert foxtrot.pushed_to


def test_a_second_builder_on_the_registry_builds_nothing_already_published(
    night: Night, tmp_path: Path
) -> None:
    other = Store(tmp_path / "other")
    report = build_all(other, night.directory, night.options)
    got = statuses(report)
    assert {k for k, v in got.items() if v == "published"} == {
        k for k, v in EXPECTED.items() if v == "built"
    }
    assert sum(r.launches for r in report.results) == 0
    assert got["broken:1"] == "failed" and got["golf:1"] == "skipped"
    # What the first builder pushed under each key is what the second one found.
    first = {r.recipe: r.digest for r in build_all(night.store, night.directory).results}
    assert first["charlie:1"] == next(r.digest for r in report.results if r.recipe == "charlie:1")


def test_a_cycle_is_one_clear_error(tmp_path: Path) -> None:
    derived_recipe(tmp_path, "x", "y.toml")
    derived_recipe(tmp_path, "y", "x.toml")
    with pytest.raises(RecipeError, match=r"recipe cycle: x.toml -> y.toml -> x.toml"):
        load_folder(tmp_path)
    done = subprocess.run(
        [*IMAGEKIT, "build", "--all", str(tmp_path), "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "imagekit: error: recipe cycle: x.toml -> y.toml -> x.toml; break it in one of these files"
    ]


def test_ctrl_c_mid_build_leaves_no_qemu_and_a_consistent_store(
    night: Night, tmp_path: Path
) -> None:
    directory = tmp_path / "recipes"
    directory.mkdir()
    for name in ("alpha", "upstream"):
        suffix = ".toml" if name == "alpha" else ".asc"
        (directory / f"{name}{suffix}").write_bytes(
            (night.directory / f"{name}{suffix}").read_bytes()
        )
    derived_recipe(directory, "delta", "alpha.toml", '[[customize]]\nhostname = "interrupted"\n')
    store = tmp_path / "store"
    process = subprocess.Popen(
        [*IMAGEKIT, "build", "--all", str(directory), "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((store / "tmp").glob("new-*")) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        time.sleep(3)  # the appliance is starting: qemu runs in the process group
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr.decode().strip().endswith("imagekit: interrupted")
    left = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # no qemu, no helper of the session left
    opened = Store(store)
    assert opened.fsck().ok
    refs = {ref for ref, _ in opened.refs()}
    assert "alpha:1" in refs and "delta:1" not in refs


def test_builds_wait_for_their_share_of_memory(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable:    3000000 kB\n")
    assert available_memory(meminfo) == 3000000 * 1024
    derived_recipe(tmp_path, "plain", "other.toml")
    need = memory_need(load_recipe_file(tmp_path / "plain.toml"))
    assert need == (MEMSIZE_MIB << 20) + QEMU_OVERHEAD
    budget = MemoryBudget(int(need * 1.5))  # room for one build at a time
    inside: list[int] = []
    most = 0

    def build() -> None:
        nonlocal most
        with budget.share(need):
            inside.append(1)
            most = max(most, len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    with budget.share(need * 10):  # more than there is: it runs alone, not never
        pass
