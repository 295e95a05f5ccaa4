"""Recipe lookup by name: the name a file declares, fixed versions, shadowing, unknown versions.

Each command runs as ``python -m imagekit`` with ``IMAGEKIT_RECIPES`` naming a user recipe
directory; images come from the loopback upstream (tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagekit.errors import RecipeError
from tests.clirun import imagekit as run_imagekit
from tests.conftest import REPO, Upstream
from tests.reliability import figures

FILENAME = "Lookup-Cloud-1.qcow2"
BUNDLED = REPO / "recipes"


def imagekit(
    *args: str, recipes: Path, store: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_imagekit(*args, store=store, env={"IMAGEKIT_RECIPES": str(recipes)})


def test_a_user_recipe_is_found_by_the_name_it_declares(
    upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    recipe = upstream.recipe(FILENAME, name="lookup-cloud")  # the file is lookup-cloud-1.toml
    assert recipe.stem != "lookup-cloud"
    store = tmp_path / "store"

    listed = json.loads(imagekit("recipes", "--json", recipes=upstream.directory).stdout)
    by_name = imagekit("pull", "lookup-cloud", "--json", recipes=upstream.directory, store=store)
    by_stem = imagekit("pull", recipe.stem, "--json", recipes=upstream.directory, store=store)

    row = next(row for row in listed if row["name"] == "lookup-cloud")
    assert row["path"] == str(recipe) and row["shadows"] is None
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["ref"] == "lookup-cloud:1"
    assert by_stem.returncode == 0, by_stem.stderr  # the file's stem still names it
    assert json.loads(by_stem.stdout)["cached"] is True


def test_a_fixed_version_recipe_refuses_another_version_before_any_request(
    upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    recipe = upstream.recipe(FILENAME, name="lookup-cloud", version="1")
    store = tmp_path / "store"

    by_name = imagekit("pull", "lookup-cloud:12", recipes=upstream.directory, store=store)
    built = imagekit("build", "lookup-cloud:12", recipes=upstream.directory, store=store)

    for done in (by_name, built):
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"imagekit: error: {recipe}: lookup-cloud has no version '12'; known versions: 1"
        ]
        figures.add("recipes: versions a recipe does not offer refused before any request")
    assert upstream.server.log() == []
    assert (
        not (store / "index.json").exists()
        or "lookup-cloud" not in (store / "index.json").read_text()
    )


def test_a_user_recipe_that_shadows_a_bundled_one_says_so(
    upstream: Upstream, image_bytes: bytes, tmp_path: Path
) -> None:
    upstream.publish(FILENAME, image_bytes)
    mine = upstream.recipe(FILENAME, name="debian", version="1")
    bundled = BUNDLED / "debian.toml"
    store = tmp_path / "store"

    text = imagekit("recipes", recipes=upstream.directory)
    listed = json.loads(imagekit("recipes", "--json", recipes=upstream.directory).stdout)
    pulled = imagekit("pull", "debian", "--json", recipes=upstream.directory, store=store)
    other = imagekit("pull", "debian:12", recipes=upstream.directory, store=store)

    line = next(line for line in text.stdout.splitlines() if line.startswith("debian "))
    assert f"(shadows {bundled})" in line
    row = next(row for row in listed if row["name"] == "debian")
    assert (row["path"], row["shadows"]) == (str(mine), str(bundled))
    assert all(r["shadows"] is None for r in listed if r["name"] != "debian")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["ref"] == "debian:1"
    assert pulled.stderr.splitlines() == [
        f"imagekit: note: recipe debian is {mine}, shadowing {bundled}"
    ]
    assert other.returncode == 2  # the user's debian offers 1 only, and the error names it
    assert f"{mine}: debian has no version '12'; known versions: 1" in other.stderr


@pytest.mark.parametrize(
    ("target", "known"),
    [
        ("fedora-server:99", "40, 41, 42, 43, 44, 45, 46, 47, latest"),
        ("debian:11", "12, 13, latest"),
        ("ubuntu:20.04", "22.04, 24.04, latest"),
        ("centos-stream:8", "9, 10, latest"),
    ],
)
@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_an_unknown_version_is_refused_alike_listing_the_known_ones(
    target: str, known: str, offline: bool, tmp_path: Path
) -> None:
    """Online or offline, before any request (there is no network here: a request would fail
    with exit 3, and offline with "never fetched")."""
    flags = ["--offline"] if offline else []
    done = imagekit("pull", target, *flags, recipes=tmp_path / "none", store=tmp_path / "store")

    name, _, version = target.partition(":")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"imagekit: error: {BUNDLED / name}.toml: {name} has no version {version!r}; "
        f"known versions: {known}"
    ]
    figures.add("recipes: versions a recipe does not offer refused before any request")


def test_offline_without_cached_metadata_is_said_for_a_known_version(tmp_path: Path) -> None:
    done = imagekit(
        "pull", "fedora-server:44", "--offline", recipes=tmp_path / "none", store=tmp_path / "s"
    )

    assert done.returncode == 3
    assert "releases.json was never fetched" in done.stderr and "without --offline" in done.stderr


def test_two_files_declaring_one_name_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    text = 'name = "twin"\nversion = "1"\n[source]\nkind = "http"\nurl = "http://h/x.qcow2"\n'
    for stem in ("a", "b"):
        (recipes / f"{stem}.toml").write_text(text + 'level = "unverified"\n')
    monkeypatch.setenv("IMAGEKIT_RECIPES", str(recipes))
    from imagekit.recipe import find_recipe

    with pytest.raises(RecipeError, match=r"a.toml and .*b.toml both declare name = 'twin'"):
        find_recipe("twin")
    listed = json.loads(imagekit("recipes", "--json", recipes=recipes).stdout)
    pulled = imagekit("pull", "twin", recipes=recipes, store=tmp_path / "store")

    row = next(row for row in listed if row["name"] == "twin")
    assert "both declare name = 'twin'; rename one" in row["error"]
    assert pulled.returncode == 2 and "rename one" in pulled.stderr
