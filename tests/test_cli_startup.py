"""The command line builds only the command it runs (typer otherwise builds all on each start)."""

from __future__ import annotations

import pytest
from typer.main import get_group

from imagekit.cli import _group, app

ALL = sorted(get_group(app).commands)


@pytest.mark.parametrize("name", ALL)
def test_each_command_is_built_alone_under_its_own_name(name: str) -> None:
    assert sorted(_group([name, "--json"]).commands) == [name]


@pytest.mark.parametrize("args", [[], ["--help"], ["lst"], ["--store", "x", "pull"]])
def test_help_no_command_and_unknown_names_get_every_command(args: list[str]) -> None:
    assert sorted(_group(args).commands) == ALL
