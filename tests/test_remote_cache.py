"""imagekit build --cache-from/--cache-to: builders share step layers through a real registry.

A scratch base is not bit-reproducible, so the builders share an http base (a qcow2 with a
pinned, signed sha256): then builder B's step key equals builder A's and B's layer comes from
the registry with no launch. Launches: the scratch image that becomes the http base (1), A's
step (1), the step a forged cache entry makes C build itself (1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import imagekit
from imagekit.build import BuildCache, BuildResult
from imagekit.build.remote import CacheOptions, RemoteCache, cache_tag
from imagekit.core.digest import canonical_json
from imagekit.oci import transfer
from imagekit.oci.media import MEDIA_MANIFEST, PARENT_ANNOTATION, signature_tag
from imagekit.oci.reference import RegistryRef
from imagekit.oci.registry import Registry
from imagekit.store import Store
from imagekit.verify import keys
from imagekit.verify.trust import TrustPolicy
from tests.conftest import Upstream
from tests.events import Events
from tests.gpgtools import TestKey
from tests.guestimage import build_guest_tree
from tests.httpserver import LoopbackServer
from tests.registry import RunningRegistry, running_registry
from tests.test_build import write_recipe

pytestmark = pytest.mark.guestfs

STEP = '[[customize]]\nhostname = "shared"\nwrite = ["/etc/motd:from the shared cache"]\n'


@dataclass
class Shared:
    directory: Path
    registry: RunningRegistry
    recipe: Path
    key: keys.KeyFiles
    first: BuildResult  # builder A's build, published with --cache-to
    launches: int

    def repo(self, name: str) -> str:
        return f"oci://{self.registry.host}/{name}"

    @property
    def step_key(self) -> str:
        return str(self.first.image.provenance["steps"][-1]["key"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, signing_key: TestKey) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("remotecache")
    build_guest_tree(directory / "tree")
    scratch = Store(directory / "scratch").build(
        imagekit.load_recipe(write_recipe(directory, "", name="base"))
    )
    flat = scratch.image.export(directory / "base.qcow2")
    recipes = directory / "recipes"
    recipes.mkdir()
    key = keys.generate(directory / "build", "")
    with LoopbackServer() as server, running_registry(directory / "registry") as registry:
        upstream = Upstream(server, recipes, signing_key)
        upstream.publish("Base.qcow2", flat.read_bytes())
        recipe = upstream.recipe("Base.qcow2", name="web", extra=STEP)
        events = Events()
        first = Store(directory / "a").build(
            imagekit.load_recipe(recipe),
            progress=events,
            cache_to=f"oci://{registry.host}/cache",
            sign_key=key.private,
        )
        yield Shared(directory, registry, recipe, key, first, events.launches)


def test_a_second_builder_takes_the_step_layer_from_the_registry(shared: Shared) -> None:
    assert shared.launches == 1
    host = shared.registry.host
    registry = Registry(host)
    digest = registry.manifest_digest("cache", cache_tag(shared.step_key))
    assert digest is not None
    assert registry.manifest_digest("cache", signature_tag(digest)) is not None
    trust = TrustPolicy((shared.key.public,), (f"oci://{host}/cache:*",))
    store = Store(shared.directory / "b", trust=trust)
    events = Events()

    result = store.build(
        imagekit.load_recipe(shared.recipe), progress=events, cache_from=shared.repo("cache")
    )

    assert events.launches == 0
    assert [layer.cached for layer in result.layers] == [False, True]
    assert result.layers[1].note == f"from {shared.repo('cache')}:{cache_tag(shared.step_key)}"
    assert result.image.disks == shared.first.image.disks
    mine, theirs = result.image.provenance["steps"][-1], shared.first.image.provenance["steps"][-1]
    assert mine["inspection"] == theirs["inspection"]
    assert mine["messages"] == theirs["messages"]
    assert store.fsck().ok
    # A warm rebuild hits the local cache now: nothing asked of the registry.
    mark = shared.registry.mark()
    again = store.build(imagekit.load_recipe(shared.recipe), cache_from=shared.repo("cache"))
    assert [layer.cached for layer in again.layers] == [True, True]
    assert shared.registry.since(mark) == []


def test_an_entry_on_another_parent_is_refused_and_the_step_built_here(shared: Shared) -> None:
    """A forged entry (same key's tag, layer said to build on another disk) is not used."""
    a = Store(shared.directory / "a")
    host = shared.registry.host
    real = Registry(host).get_manifest("cache", cache_tag(shared.step_key)).json()
    real["layers"][0]["annotations"][PARENT_ANNOTATION] = "sha256:" + "0" * 64
    with a.shared_lock():
        forged = a.add_bytes(canonical_json(real), MEDIA_MANIFEST).digest
        target = RegistryRef.parse(f"{shared.repo('forged')}:{cache_tag(shared.step_key)}")
        transfer.push(a, forged, target, Registry(host))
    store = Store(shared.directory / "c")
    events = Events()

    result = store.build(
        imagekit.load_recipe(shared.recipe), progress=events, cache_from=shared.repo("forged")
    )

    assert events.launches == 1
    assert [layer.cached for layer in result.layers] == [False, False]
    note = result.layers[1].note
    assert note.startswith(f"remote cache entry {target} not used")
    assert "not on this build's parent" in note and note.endswith("built here")
    assert result.image.disks[-1].annotations[PARENT_ANNOTATION] == result.image.disks[0].digest


def test_an_unsigned_entry_is_ignored_where_trust_requires_a_signature(shared: Shared) -> None:
    a = Store(shared.directory / "a")
    host = shared.registry.host
    registry = Registry(host)
    tag = cache_tag(shared.step_key)
    digest = registry.manifest_digest("cache", tag)
    assert digest is not None
    with a.shared_lock():  # the same entry, in a repository where nobody signed it
        transfer.push(a, digest, RegistryRef.parse(f"{shared.repo('unsigned')}:{tag}"), registry)
    trust = TrustPolicy((shared.key.public,), (f"oci://{host}/unsigned:*",))
    store = Store(shared.directory / "d")
    base_only = shared.recipe.with_name("web-base.toml")
    base_only.write_text(shared.recipe.read_text().replace(STEP, ""))
    parent = store.build(imagekit.load_recipe(base_only)).image.disk  # a fetch, no launch
    assert parent == shared.first.image.disks[0]

    found = RemoteCache(store, CacheOptions(shared.repo("unsigned"), trust=trust)).find(
        shared.step_key, parent
    )

    assert found.layer is None
    assert "is not signed" in found.note
    assert not store.has_blob(shared.first.image.disk.digest)
    assert BuildCache(store).get(shared.step_key) is None
    # Not required there, the same entry is used.
    open_trust = TrustPolicy((shared.key.public,))
    used = RemoteCache(store, CacheOptions(shared.repo("unsigned"), trust=open_trust)).find(
        shared.step_key, parent
    )
    assert used.layer == shared.first.image.disk
    assert BuildCache(store).get(shared.step_key) == used.layer
    record = BuildCache(store).record(shared.step_key)
    assert record["inspection"] == shared.first.image.provenance["steps"][-1]["inspection"]
