"""Run each atheris fuzz target in fuzz/ for a bounded number of executions: no crash allowed.

A target crashes on any exception other than imagekit's own typed errors (ImagekitError) or on a
broken invariant of what a parser accepted. Each run starts from the seed corpus in
fuzz/corpus/<target>/ (which also keeps every input that once crashed a target, so they are
replayed first on every run); new inputs go to a scratch corpus, crash files to tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagekit.errors import RecipeError
from imagekit.recipe import load_recipe_string
from tests.conftest import REPO
from tests.reliability import figures
from tests.require import require

TARGETS = ["recipe", "checksums", "store_index", "qcow2", "secrets"]
RUNS = 3000
MAX_SECONDS = 20


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_no_crash(target: str, tmp_path: Path) -> None:
    require(
        importlib.util.find_spec("atheris") is not None,
        "atheris is not installed (pip install atheris; it ships x86_64/aarch64 Linux wheels)",
    )
    scratch_corpus = tmp_path / "corpus"
    scratch_corpus.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    seeds = REPO / "fuzz" / "corpus" / target
    assert any(seeds.iterdir()), f"no seeds in {seeds}"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / f"fuzz_{target}.py"),
            str(scratch_corpus),  # first corpus dir: libFuzzer writes new inputs here only
            str(seeds),
            f"-runs={RUNS}",
            f"-max_total_time={MAX_SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-seed=1",
        ],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(scratch)},  # the targets' temp stores and files
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 120,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert run.returncode == 0 and not crashes, (
        f"fuzz_{target} crashed (exit {run.returncode}); inputs kept in {tmp_path}: {crashes}\n"
        + run.stderr[-4000:]
    )
    done = re.search(r"Done (\d+) runs in (\d+) second", run.stderr)
    assert done, run.stderr[-2000:]
    figures.add(f"fuzz executions: {target}", int(done.group(1)))
    figures.note(f"fuzz time: {target}", f"{done.group(2)} s")


# --- inputs the fuzzers once crashed on (also kept in fuzz/corpus/<target>/crash-*) -----------


@pytest.mark.parametrize(
    "template", ["fedora-server-dvd\nrsion}", "}", "{version", "x}{version}", "{0}", "{}"]
)
def test_unbalanced_brace_in_a_kickstart_installer_recipe_is_a_recipe_error(
    template: str, tmp_path: Path
) -> None:
    """fuzz_recipe crash-a232ee23: string.Formatter().parse() raises ValueError lazily, while
    _expand iterated it outside its try; a lone "}" escaped as a bare ValueError."""
    text = (
        'name = "ks"\nversion = "41"\n[source]\nkind = "kickstart"\n'
        f"installer = {{ recipe = {json.dumps(template)} }}\n"
        'kickstart = "a.ks"\ndisk = { size = "20G", format = "qcow2" }\n'
    )
    with pytest.raises(RecipeError):
        load_recipe_string(text, base_dir=tmp_path)


LONG = "x" * 300  # longer than NAME_MAX: stat() fails with ENAMETOOLONG, not ENOENT


@pytest.mark.parametrize(
    "source",
    [
        f'kind = "scratch"\ncontent = "{LONG}"\nsize = "1G"',
        f'kind = "kickstart"\nkickstart = "{LONG}"\ninstaller = {{ recipe = "x" }}',
        f'kind = "kickstart"\nkickstart = "a.ks"\n'
        f'installer = {{ path = "{LONG}", sha256 = "{"0" * 64}" }}',
        'kind = "http"\nurl = "https://h.invalid/a.qcow2"\n'
        'checksum_url = "https://h.invalid/SUMS"\nsignature_url = "https://h.invalid/SUMS.gpg"\n'
        f'keys = ["{LONG}"]',
    ],
)
def test_a_local_path_too_long_for_the_os_is_a_recipe_error(source: str, tmp_path: Path) -> None:
    """fuzz_recipe crash-50d05532: Path.exists()/is_file() raise OSError(ENAMETOOLONG) instead
    of returning False; a scratch content, kickstart, installer ISO or key path escaped as OSError.
    """
    (tmp_path / "a.ks").write_text("text\n")
    with pytest.raises(RecipeError):
        load_recipe_string(f'name = "n"\nversion = "1"\n[source]\n{source}\n', base_dir=tmp_path)


@pytest.mark.parametrize("repeat", ["{99999999999999999999}", "{1,99999999999999999999}"])
def test_a_resolver_regex_with_a_huge_repeat_count_is_a_recipe_error(
    repeat: str, tmp_path: Path
) -> None:
    """fuzz_recipe crash-da88faeb: re.compile raises OverflowError (not re.error) on a repeat
    count past sys.maxsize; the [resolve] image regex check let it escape."""
    recipe = (REPO / "recipes" / "debian.toml").read_text()
    assert "[0-9]{8}" in recipe
    with pytest.raises(RecipeError, match="invalid regex"):
        load_recipe_string(recipe.replace("[0-9]{8}", "[0-9]" + repeat), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("crash", "message"),
    [
        ("crash-a232ee23be38c7b0288789f1b6f9386f802d972f", "malformed placeholder"),
        ("crash-50d0553257d0b4db76f39518a74a04fe49771d44", "does not exist"),
        ("crash-da88faebd459256c15d34a3d28a2afa2c1729368", "invalid regex"),
    ],
)
def test_the_fuzz_crash_inputs_are_recipe_errors(crash: str, message: str, tmp_path: Path) -> None:
    data = (REPO / "fuzz" / "corpus" / "recipe" / crash).read_bytes()
    with pytest.raises(RecipeError, match=message):
        load_recipe_string(data.decode("utf-8", "replace"), base_dir=tmp_path)
