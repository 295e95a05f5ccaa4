"""A recipe chain is validated whole before anything is fetched, installed or launched."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagekit
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.events import Events


def test_a_bad_step_is_refused_before_the_base_is_fetched(
    upstream: Upstream, store: Store, tmp_path: Path
) -> None:
    upstream.publish("Base-1.qcow2", make_qcow2(tmp_path / "base.qcow2", seed=11))
    recipe = upstream.recipe(
        "Base-1.qcow2", name="stepped", extra='\n[[customize]]\nhostname = "not a hostname!"\n'
    )
    events = Events()

    with pytest.raises(imagekit.RecipeError, match="hostname"):
        store.build(imagekit.load_recipe(recipe), progress=events)

    assert upstream.server.log() == []
    assert events.launches == 0
    assert list(store.blobs_dir.iterdir()) == []


def test_a_bad_step_in_a_base_recipe_is_refused_before_any_fetch(
    upstream: Upstream, store: Store, tmp_path: Path
) -> None:
    upstream.publish("Base-2.qcow2", make_qcow2(tmp_path / "base.qcow2", seed=12))
    base = upstream.recipe(
        "Base-2.qcow2", name="base", extra='\n[[customize]]\ntimezone = "Not/A Zone"\n'
    )
    top = tmp_path / "top.toml"
    top.write_text(
        f'name = "top"\nversion = "1"\n[source]\nkind = "recipe"\nrecipe = "{base}"\n'
        '[[customize]]\nhostname = "web1"\n'
    )

    with pytest.raises(imagekit.RecipeError, match="timezone"):
        store.build(imagekit.load_recipe(top))

    assert upstream.server.log() == []
    assert list(store.blobs_dir.iterdir()) == []
