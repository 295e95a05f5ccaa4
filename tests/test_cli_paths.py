"""Every path a command takes, given a directory, a missing file, an empty file or /dev/zero.

Each ends in one ``imagekit: error:`` line naming the path the user gave, the documented exit
code, nothing on stdout and no traceback, within the timeout (no endless read of /dev/zero).
Where one of the four is a valid input (an empty file to upload, a directory to copy in, a
missing store that is created) it is left out: it would run the command. ``verify``'s paths are
covered with its own checks. Commands run as ``python -m imagekit`` subprocesses.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.store import Store
from tests.clirun import imagekit
from tests.conftest import make_qcow2
from tests.reliability import figures

DEV_ZERO = Path("/dev/zero")
DEV_NULL = Path("/dev/null")


@dataclass(frozen=True)
class Command:
    """A command line around one path, and the exit code for each kind of path it is given."""

    args: Callable[[Path, Path], list[str]]  # (the path, a store holding "d:1") -> argv
    codes: dict[str, int]
    env: str | None = None  # the environment variable that takes the path instead


COMMANDS = {
    "build RECIPE": Command(
        lambda p, s: ["build", str(p), "--store", str(s)],
        {"directory": 2, "missing": 2, "empty": 2, "dev-zero": 2},
    ),
    "pull RECIPE": Command(
        lambda p, s: ["pull", str(p), "--store", str(s)],
        {"directory": 2, "missing": 2, "empty": 2, "dev-zero": 2},
    ),
    "import FILE": Command(
        lambda p, s: ["import", str(p), "--name", "mine:1", "--store", str(s)],
        {"directory": 2, "missing": 2, "empty": 2, "dev-zero": 2},
    ),
    "import FILE --format raw": Command(
        lambda p, s: ["import", str(p), "--name", "mine:1", "--format", "raw", "--store", str(s)],
        {"directory": 2, "missing": 2, "empty": 5, "dev-zero": 2},
    ),
    "export -o": Command(  # never a device: export replacing one is another item of issue 10
        lambda p, s: ["export", "d:1", "-o", str(p), "--store", str(s)],
        {"directory": 2, "missing-directory": 2},
    ),
    "customize --upload": Command(
        lambda p, s: ["customize", "d:1", "--upload", f"{p}:/root", "--store", str(s)],
        {"directory": 2, "missing": 2, "dev-zero": 2},
    ),
    "customize --copy-in": Command(
        lambda p, s: ["customize", "d:1", "--copy-in", f"{p}:/root", "--store", str(s)],
        {"missing": 2, "dev-zero": 2},
    ),
    "recipes, IMAGEKIT_RECIPES": Command(
        lambda p, s: ["recipes"], {"empty": 2, "dev-zero": 2, "dev-null": 2}, "IMAGEKIT_RECIPES"
    ),
    "--store": Command(
        lambda p, s: ["images", "--store", str(p)], {"empty": 6, "dev-zero": 6, "dev-null": 6}
    ),
}
CASES = [(name, kind) for name, command in COMMANDS.items() for kind in command.codes]


def given(kind: str, tmp_path: Path) -> Path:
    """A path of this kind (under tmp_path unless it is a device)."""
    if kind == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
        return path
    if kind == "empty":
        path = tmp_path / "empty"
        path.touch()
        return path
    paths = {
        "missing": tmp_path / "missing",
        "missing-directory": tmp_path / "no-such-directory" / "out.qcow2",
        "dev-zero": DEV_ZERO,
        "dev-null": DEV_NULL,
    }
    return paths[kind]


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int, path: Path) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("imagekit: error: "), lines
    assert str(path) in lines[0], lines  # the user's path, not a temporary one
    return lines[0]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one small image, ``d:1``."""
    root = tmp_path_factory.mktemp("paths")
    disk = root / "d.qcow2"
    make_qcow2(disk, size=1 << 20, seed=6)
    Store(root / "store").import_file(disk, "d:1")
    return root / "store"


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n} {k}" for n, k in CASES])
def test_a_bad_path_is_one_error_line_with_its_exit_code(
    name: str, kind: str, stored: Path, tmp_path: Path
) -> None:
    command = COMMANDS[name]
    path = given(kind, tmp_path)
    env = {command.env: str(path)} if command.env else None

    done = imagekit(*command.args(path, stored), env=env)

    assert_one_error_line(done, command.codes[kind], path)
    assert DEV_NULL.is_char_device() and DEV_ZERO.is_char_device()
    figures.add("paths: bad path arguments refused in one line")


def test_a_missing_recipe_directory_is_skipped(tmp_path: Path) -> None:
    done = imagekit(*["recipes", "--json"], env={"IMAGEKIT_RECIPES": str(tmp_path / "missing")})

    assert done.returncode == 0, done.stderr
    assert '"fedora-cloud"' in done.stdout


def test_broken_files_in_a_recipe_directory_are_listed_with_their_errors(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "sub.toml").mkdir()
    (recipes / "empty.toml").touch()
    (recipes / "zero.toml").symlink_to(DEV_ZERO)
    os.mkfifo(recipes / "fifo.toml")  # nobody writes it: an open would wait for ever
    (recipes / "big.toml").write_text("#" * (2 << 20))
    (recipes / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    env = {"IMAGEKIT_RECIPES": str(recipes)}

    listed = imagekit(*["recipes"], env=env)
    pulls = {
        stem: imagekit(*["pull", stem, "--store", str(tmp_path / "s")], env=env)
        for stem in ("sub", "empty", "zero", "fifo", "big", "latin1")
    }

    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    expected = {
        "sub": "is a directory",
        "empty": "name",  # no name = ...: the key table's message
        "zero": "is not a regular file",
        "fifo": "is not a regular file",
        "big": "is larger than 1048576 bytes",
        "latin1": "is not UTF-8 text",
    }
    for stem, message in expected.items():
        assert " error: " in rows[stem] and message in rows[stem], rows[stem]
        line = assert_one_error_line(pulls[stem], 2, recipes / f"{stem}.toml")
        assert message in line
        figures.add("paths: broken recipe files listed and refused in one line")


@pytest.mark.parametrize(
    ("content", "flags", "code", "message"),
    [
        (b"hello\n", [], 2, "has no disk image header (qcow2 or other); if it is a raw disk"),
        (b"root:$6$salt$hash:19000:0:99999:7:::\n" * 20, [], 2, "import it with --format raw"),
        (b"hello\n", ["--format", "raw"], 5, "it is 6 bytes, and a raw disk image is a whole"),
        (bytes(1000), ["--format", "raw"], 5, "it is 1000 bytes"),
        (None, ["--format", "raw"], 5, "detected format 'qcow2' (by magic), but 'raw'"),
    ],
    ids=["text", "shadow-like", "text-as-raw", "odd-size-raw", "qcow2-as-raw"],
)
def test_import_takes_raw_only_when_told_and_names_the_users_file(
    content: bytes | None, flags: list[str], code: int, message: str, tmp_path: Path
) -> None:
    mine = tmp_path / "mine.img"
    if content is None:
        make_qcow2(mine, size=1 << 20, seed=7)
    else:
        mine.write_bytes(content)
    store = tmp_path / "store"

    done = imagekit(*["import", str(mine), "--name", "mine:1", *flags, "--store", str(store)])

    line = assert_one_error_line(done, code, mine)
    assert message in line and str(store) not in line
    assert not (store / "index.json").exists() or "mine" not in (store / "index.json").read_text()
    figures.add("import: files that are not disk images refused, naming the user's file")


def test_a_raw_disk_is_imported_with_format_raw(tmp_path: Path) -> None:
    mine = tmp_path / "mine.raw"
    mine.write_bytes(bytes(1 << 20))

    done = imagekit(
        *[
            "import",
            str(mine),
            "--name",
            "mine:1",
            "--format",
            "raw",
            "--json",
            "--store",
            str(tmp_path / "store"),
        ]
    )

    assert done.returncode == 0, done.stderr
    assert '"format": "raw"' in done.stdout
