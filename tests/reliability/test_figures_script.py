"""scripts/reliability_figures.py: a run's printed figures become the doc's "last run" column."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

DOC = """\
| promise | test(s) | last run |
|---|---|---|
| gc kills | `test_kill.py::test_kill_gc_mid_sweep` | 1 kill points |
| all of the above | | **1 kills survived** |
| names | `test_names.py` | 1 hostile names refused |
| builds | `test_build_kills.py` | old build figures |
| someone else's row | `test_new.py` | as its author wrote it |
| printed figures | `test_other.py` | hostile names refused: 1; not a figure: x |

Last run: `1 passed in 1s` on the 2-core development machine.
"""
OUTPUT = """\
........                                                                 [100%]
============================= reliability figures ==============================
hostile names refused: 36
kill points: gc sweep: 3
kills survived: 35
kill seed: 42 (rerun with IMAGEKIT_RELIABILITY_SEED=42)
=========================== short test summary info ============================
SKIPPED [1] tests/reliability/test_fuzz.py:34: atheris is not installed
120 passed, 1 skipped, 9 deselected in 95.31s (0:01:35)
"""


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reliability_figures", REPO / "scripts" / "reliability_figures.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def rows(doc: str) -> dict[str, str]:
    return {
        line.split("|")[1].strip(): line.split("|")[3].strip()
        for line in doc.splitlines()
        if line.startswith("| ")
    }


def check(script: ModuleType, source: Path, tmp_path: Path) -> list[str]:
    doc = tmp_path / "reliability.md"
    doc.write_text(DOC)
    with pytest.MonkeyPatch.context() as patch:
        kept: list[str] = []
        patch.setattr(sys, "stderr", _Lines(kept))
        assert script.main([str(source), "--doc", str(doc), "--write"]) == 0
    cells = rows(doc.read_text())
    assert cells["gc kills"] == "3 kill points"
    assert (
        cells["all of the above"]
        == "**35 kills survived**, seed 42 (rerun with IMAGEKIT_RELIABILITY_SEED=42)"
    )
    assert cells["names"] == "36 hostile names refused"
    assert cells["builds"] == "old build figures"  # not in this run: kept
    assert cells["someone else's row"] == "as its author wrote it"  # no figure in it: kept
    assert cells["printed figures"] == "hostile names refused: 36; not a figure: x"
    assert "| all of the above | | **35" in doc.read_text()
    return [line for line in doc.read_text().splitlines() if line.startswith("Last run:")] + kept


def test_figures_from_captured_pytest_output(script: ModuleType, tmp_path: Path) -> None:
    source = tmp_path / "run.txt"
    source.write_text(OUTPUT)
    last, *kept = check(script, source, tmp_path)
    assert last.startswith("Last run: `120 passed, 1 skipped, 9 deselected in 95.31s`")
    assert "kept as it was: test_build_kills.py: not in this run\n" in kept
    assert "kept as it was: test_new.py: not in this run\n" in kept


def test_figures_from_the_json_the_suite_writes(script: ModuleType, tmp_path: Path) -> None:
    source = tmp_path / "figures.json"
    record = {
        "figures": {"hostile names refused": 36, "kill points: gc sweep": 3, "kills survived": 35},
        "notes": {"kill seed": "42 (rerun with IMAGEKIT_RELIABILITY_SEED=42)"},
        "outcomes": {"passed": 120, "deselected": 9},
        "seconds": 95.31,
        "args": ["-q", "tests/reliability", "-m", "not guestfs"],
    }
    source.write_text(json.dumps(record))
    last, *_ = check(script, source, tmp_path)
    assert last.startswith(
        "Last run: `120 passed, 9 deselected in 95.31s` (`pytest -q tests/reliability -m not "
        "guestfs`)"
    )


class _Lines:
    """A stand-in stderr that keeps what was printed."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> int:
        if text.strip():
            self.into.append(text.rstrip("\n") + "\n")
        return len(text)

    def flush(self) -> None:
        pass
