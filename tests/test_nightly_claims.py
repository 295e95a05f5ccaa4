"""Builders started at the same moment on one registry build each recipe once (claims).

Six plain verified pulls from the loopback mirror (no appliance), one real registry: two
``imagekit build --all`` processes at once, then a claim left by a dead builder taken over.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from imagekit.nightly import NightlyOptions, RecipeResult, build_all, key_tag
from imagekit.nightly.claims import Claims
from imagekit.oci.registry import Registry
from imagekit.recipe import load_recipe_file
from imagekit.store import Store
from tests.conftest import REPO, make_qcow2
from tests.gpgtools import TestKey
from tests.httpserver import LoopbackServer
from tests.registry import RunningRegistry, running_registry
from tests.test_nightly import http_recipe, publish

NAMES = ("one", "two", "three", "four", "five", "six")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass
class Folder:
    directory: Path
    registry: RunningRegistry


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, signing_key: TestKey) -> Iterator[Folder]:
    work = tmp_path_factory.mktemp("claims")
    directory = work / "recipes"
    directory.mkdir()
    (directory / "upstream.asc").write_bytes(signing_key.public_key.read_bytes())
    with LoopbackServer() as server, running_registry(work / "registry") as registry:
        for seed, name in enumerate(NAMES, 10):
            data = make_qcow2(work / f"{name}.qcow2", size=1 << 20, seed=seed)
            publish(server, signing_key, name, data)
            http_recipe(directory, server, name, name)
        yield Folder(directory, registry)


def test_two_builders_started_together_build_each_recipe_once(
    folder: Folder, tmp_path: Path
) -> None:
    push = f"oci://{folder.registry.host}/together"
    processes = [
        subprocess.Popen(
            [
                *[sys.executable, "-m", "imagekit", "build", "--all", str(folder.directory)],
                *["--store", str(tmp_path / f"store{n}"), "--push", push, "-j", "2"],
                *["--report", str(tmp_path / f"r{n}.json")],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for n in (1, 2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    reports = [json.loads((tmp_path / f"r{n}.json").read_text()) for n in (1, 2)]
    statuses = [{r["recipe"]: r["status"] for r in report["recipes"]} for report in reports]
    for name in NAMES:
        pair = sorted(got[f"{name}:1"] for got in statuses)
        assert pair == ["built", "published"], (name, statuses, outputs)
    digests = [{r["recipe"]: r["digest"] for r in report["recipes"]} for report in reports]
    assert digests[0] == digests[1]  # what one built is what the other found published


def test_an_expired_claim_of_a_dead_builder_is_taken_over(folder: Folder, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    recipe = load_recipe_file(folder.directory / "three.toml")
    tag = key_tag(recipe, store.input_key(recipe), ".claim")
    assert TAG.fullmatch(tag) and tag.endswith(".claim")
    registry = Registry(folder.registry.host, repository="dead")
    seen: list[tuple[str, str]] = []

    def listener(result: RecipeResult) -> None:
        seen.append((result.recipe, result.state))
        if (result.recipe, result.state) == ("three:1", "claiming"):  # just before it looks
            Claims(registry, "dead", "ghost").push(tag, "dead-builder-1-0000", lease=3.0)

    options = NightlyOptions(jobs=2, push=f"oci://{folder.registry.host}/dead", poll=0.2)
    started = time.monotonic()
    report = build_all(store, folder.directory, options, listener=listener)
    assert {r.recipe: r.status for r in report.results} == {f"{n}:1": "built" for n in NAMES}
    assert ("three:1", "claimed by another builder") in seen  # deferred while the lease held
    assert time.monotonic() - started < 60
    claim = Claims(registry, "dead", "reader").read(tag)
    assert claim is not None and claim.builder != "dead-builder-1-0000"  # ours superseded it


def test_claim_tags_stay_valid_for_long_names(tmp_path: Path) -> None:
    (tmp_path / "long.toml").write_text(
        f'name = "{"n" * 120}"\nversion = "1"\narch = "x86_64"\n[source]\nkind = "http"\n'
        'url = "https://example.invalid/disk.qcow2"\n'
    )
    recipe = load_recipe_file(tmp_path / "long.toml")
    key = "sha256:" + "ab" * 32
    for suffix in ("", ".claim"):
        tag = key_tag(recipe, key, suffix)
        assert TAG.fullmatch(tag), tag
        assert tag.endswith("-" + "ab" * 16 + suffix)


def test_claims_pushed_while_other_builders_upload_the_same_blob_are_accepted(
    folder: Folder,
) -> None:
    """Every builder uploads the same empty blob its claims name. A registry committing that
    blob for one builder briefly refused another's claim naming it (MANIFEST_BLOB_UNKNOWN), and
    that builder, its claim refused, built a recipe the other was building (CI, stop 9)."""

    def claim(repository: str, builder: str) -> None:
        registry = Registry(folder.registry.host, repository=repository)
        Claims(registry, repository, builder).push("key.claim", builder, lease=60.0)

    for round_ in range(30):
        repository = f"instant{round_}"  # a new repository: every builder uploads the blob
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(partial(claim, repository), [f"builder-{n}" for n in range(4)]))
        claim_now = Claims(Registry(folder.registry.host), repository, "reader").read("key.claim")
        assert claim_now is not None and claim_now.builder.startswith("builder-")


def test_a_claim_is_renewed_while_its_build_runs_and_only_then(folder: Folder) -> None:
    registry = Registry(folder.registry.host, repository="renew")
    holder = Claims(registry, "renew", "holder", lease=3.0, settle=0.1)
    other = Claims(registry, "renew", "other", lease=3.0, settle=0.1)
    assert holder.take("long.claim")
    with holder.renewed("long.claim"):
        deadline = time.monotonic() + 7.0  # more than two leases
        while time.monotonic() < deadline:
            assert other.held_elsewhere("long.claim") is not None
            time.sleep(0.5)
        other.push("long.claim", "other", lease=3.0)  # a builder that raced us: it builds
        time.sleep(1.6)  # two renewals' time
        claim = holder.read("long.claim")
        assert claim is not None and claim.builder == "other"
    assert holder.take("short.claim")
    with holder.renewed("short.claim"):
        pass
    time.sleep(3.5)
    assert other.held_elsewhere("short.claim") is None  # not renewed after the build: expired
