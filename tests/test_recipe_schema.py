"""The recipe key table is the one truth: the loader, the docs and the JSON Schema agree with it.

The JSON Schema is checked by a small validator for exactly the keywords recipe_json_schema()
emits (a keyword it does not know fails the test, so nothing is silently skipped).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagekit.errors import RecipeError
from imagekit.recipe import (
    KickstartSource,
    ScratchSource,
    load_recipe_string,
    recipe_json_schema,
    recipe_reference,
)
from imagekit.recipe.schema import DISK, KICKSTART, RECIPE, SCRATCH
from imagekit.recipe.table import Table, all_tables
from tests.conftest import KEYS, REPO

FPR = "D2EB 4462 6FDD C30B 513D  5BB7 1A5D 6C4C 7DB8 7C81"
HTTP_ALL = f"""
name = "every-http-key"
version = "2"
arch = "x86_64"
description = "every [source] key of kind http"
[source]
kind = "http"
url = "https://example.org/{{version}}/{{name}}.{{arch}}.img"
checksum_url = "https://example.org/{{version}}/SHA256SUMS"
signature_url = "https://example.org/{{version}}/SHA256SUMS.gpg"
keys = ["key.asc"]
fingerprints = ["{FPR}"]
sha256 = "{"ab" * 32}"
sha512 = "{"CD" * 64}"
level = "signed"
insecure = false
format = "raw"
filename = "{{name}}.img"
mirror_root = "https://example.org/"
mirrors = ["https://mirror.example.net/pub/"]
metalink = "https://mirrors.example.net/metalink?path={{name}}"
[[customize]]
hostname = "web1"
"""
SCRATCH_ALL = """
name = "every-scratch-key"
version = "1"
[source]
kind = "scratch"
content = "tree"
size = "64M"
partition_table = "mbr"
filesystem = "xfs"
label = "data"
format = "raw"
"""
BASE_ALL = 'name = "base"\nversion = "1"\n[source]\nkind = "recipe"\nrecipe = "fedora-server:41"\n'
KICKSTART_ALL = f"""
name = "every-kickstart-key"
version = "41"
[source]
kind = "kickstart"
installer = {{ path = "install.iso", sha256 = "{"0" * 64}" }}
kickstart = "a.ks"
disk = {{ size = "8G", format = "raw" }}
memory = "3G"
vcpus = 4
timeout = "2h"
inactivity = "90s"
delivery = "http"
kernel_args = ["inst.sshd", "inst.debug"]
syntax = "F41"
compress = true
force = true
"""
TEST_SEED = f"""{SCRATCH_ALL}
[test]
boot = true
marker = "login:"
timeout = "10m"
inactivity = "3m"
ssh = "systemctl is-system-running --wait"
ssh_user = "alice"
identity = "id_ed25519"
memory = "512M"
vcpus = 2
seed = "seed.iso"
[check]
profile = "fedora-server"
required = false
"""
TEST_CLOUD_INIT = f"""{SCRATCH_ALL}
[test]
seedless = true
[test.cloud_init]
hostname = "web1"
user = "alice"
ssh_keys = ["id.pub"]
packages = ["nginx"]
runcmd = ["touch /hold"]
user_data = "user-data.yaml"
network_config = "network.yaml"
"""
SAMPLES = {"http": HTTP_ALL, "scratch": SCRATCH_ALL, "recipe": BASE_ALL, "kickstart": KICKSTART_ALL}
SAMPLES |= {"test-seed": TEST_SEED, "test-cloud-init": TEST_CLOUD_INIT}
# A table after the [source] that the samples above set: the sample, and the line it starts at.
SECTIONS = {
    "[test]": (TEST_SEED, "[test]\n"),
    "[check]": (TEST_SEED, "[check]\n"),
    "cloud_init": (TEST_CLOUD_INIT, "[test.cloud_init]\n"),
}
BUNDLED = sorted((REPO / "recipes").glob("*.toml"))


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """The files the samples name: a content tree, a kickstart, an ISO and a key file."""
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    (tmp_path / "a.ks").write_text("text\nreboot\n")
    (tmp_path / "install.iso").write_bytes(b"")
    shutil.copy(KEYS / "ubuntu-cloudimage-keyring.asc", tmp_path / "key.asc")
    for name in ("seed.iso", "id_ed25519", "id.pub", "user-data.yaml", "network.yaml"):
        (tmp_path / name).write_bytes(b"")  # what [test] names; the loader checks they exist
    return tmp_path


def texts() -> Iterator[tuple[str, str, Path | None]]:
    """(name, text, base dir or None for the fixture's) of every sample and bundled recipe."""
    for name, text in SAMPLES.items():
        yield name, text, None
    for path in BUNDLED:
        yield path.name, path.read_text(), path.parent


def _used_keys(table: Table, data: dict[str, Any], found: dict[str, set[str]]) -> None:
    """Record which keys of which table ``data`` sets (a [source] by its kind)."""
    found.setdefault(table.title, set()).update(data)
    for key in table.keys:
        if key.tables and isinstance(data.get(key.name), dict):
            value = data[key.name]
            kind = value.get("kind", key.tables[0].kind)
            sub = next(t for t in key.tables if t.kind == kind)
            _used_keys(sub, value, found)


def test_docs_embed_the_key_reference() -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    marker = "<!-- generated: imagekit.recipe.recipe_reference();"
    section = text.split(marker, 1)[1].split("-->\n\n", 1)[1].split("\n## ", 1)[0]
    assert section == recipe_reference()


def test_every_key_in_the_table_is_set_by_a_recipe_that_loads(base_dir: Path) -> None:
    found: dict[str, set[str]] = {}
    for _name, text, where in texts():
        load_recipe_string(text, base_dir=where or base_dir)
        _used_keys(RECIPE, tomllib.loads(text), found)
    for table in all_tables(RECIPE):
        assert found[table.title] == {key.name for key in table.keys}, table.title


@pytest.mark.parametrize("table", all_tables(RECIPE), ids=lambda t: t.title.split(":")[0])
def test_the_loader_accepts_exactly_the_tables_keys(table: Table, base_dir: Path) -> None:
    """A key outside the table is refused; the keys the loader says it allows are the table's."""
    text = _with_stray_key(table)
    with pytest.raises(RecipeError, match="unknown key") as error:
        load_recipe_string(text, base_dir=base_dir)
    allowed = str(error.value).rsplit("allowed: ", 1)[1].split(", ")
    assert allowed == sorted(key.name for key in table.keys)


def _with_stray_key(table: Table) -> str:
    """A sample recipe with ``sigature_url = "x"`` added to ``table``."""
    stray = 'sigature_url = "x"'
    if table is RECIPE:
        return stray + "\n" + SCRATCH_ALL
    if table.label == "[resolve]":
        debian = (REPO / "recipes" / "debian.toml").read_text()
        return debian.replace("[resolve]\n", f"[resolve]\n{stray}\n")
    if table.label == "[source]":
        return SAMPLES[table.kind].replace("[source]\n", f"[source]\n{stray}\n")
    if table.label in SECTIONS:
        sample, line = SECTIONS[table.label]
        return sample.replace(line, f"{line}{stray}\n")
    inline = {"installer": 'installer = { path = "install.iso", ', "disk": "disk = { "}
    return KICKSTART_ALL.replace(inline[table.label], inline[table.label] + stray + ", ")


def test_loaded_values_and_model_defaults_come_from_the_table(base_dir: Path) -> None:
    full = load_recipe_string(SCRATCH_ALL, base_dir=base_dir).source
    assert full == ScratchSource(base_dir / "tree", 64 << 20, "mbr", "xfs", "data", "raw")
    minimal = SCRATCH_ALL.split("size =")[0]
    source = load_recipe_string(minimal, base_dir=base_dir).source
    assert source == ScratchSource(content=base_dir / "tree")
    assert (
        (source.size, source.filesystem) == (SCRATCH.default("size"), "ext4") == (1 << 30, "ext4")
    )
    kickstart = KICKSTART_ALL.split("disk =")[0]
    ks = load_recipe_string(kickstart, base_dir=base_dir).source
    assert isinstance(ks, KickstartSource)
    assert (ks.disk_size, ks.memory, ks.timeout) == (20 << 30, 2 << 30, 3600.0)
    assert (ks.disk_size, ks.vcpus) == (DISK.default("size"), KICKSTART.default("vcpus"))


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('filesystem = "vfat"', "unknown filesystem 'vfat'; filesystem must be one of ext4,"),
        ('filesystem = "xfs"\nlabel = "thirteen-char"', "must be 1 to 12 characters for xfs"),
        ('label = "a b"', r"label must be letters, digits, '_' or '-', not 'a b'"),
        ('size = "16M"', "size must be at least 32 MiB"),
        ("size = 64", "size must be a size"),
        ('format = "vmdk"', "format must be qcow2 or raw"),
    ],
)
def test_a_scratch_disk_imagekit_cannot_make_fails_when_the_recipe_loads(
    setting: str, words: str, base_dir: Path
) -> None:
    text = f'name = "s"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "tree"\n{setting}\n'
    with pytest.raises(RecipeError, match=words) as error:
        load_recipe_string(text, base_dir=base_dir)
    assert str(error.value).startswith("recipe [source]: ") and "\n" not in str(error.value)


# --- the JSON Schema ------------------------------------------------------------------------

ANNOTATIONS = {"$schema", "title", "description", "default"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}


def schema_errors(schema: dict[str, Any], value: Any, at: str = "$") -> list[str]:
    """What ``value`` breaks in ``schema``, for the draft 2020-12 keywords recipes use."""
    unknown = set(schema) - ANNOTATIONS - set(_CHECKS)
    assert not unknown, f"{at}: the validator does not know {unknown}"
    errors: list[str] = []
    for keyword, rule in schema.items():
        if keyword in _CHECKS and (keyword == "type" or not _wrong_type(schema, value)):
            errors += _CHECKS[keyword](rule, value, at, schema)
    return errors


def _wrong_type(schema: dict[str, Any], value: Any) -> bool:
    return "type" in schema and bool(_type(schema["type"], value, "", schema))


def _type(rule: str, value: Any, at: str, schema: Any) -> list[str]:
    ok = isinstance(value, TYPES[rule]) and (rule in ("boolean",) or not isinstance(value, bool))
    return [] if ok else [f"{at}: not {rule}"]


def _properties(rule: dict[str, Any], value: Any, at: str, schema: Any) -> list[str]:
    return [
        e for k, s in rule.items() if k in value for e in schema_errors(s, value[k], f"{at}.{k}")
    ]


def _additional(rule: Any, value: Any, at: str, schema: Any) -> list[str]:
    extra = [k for k in value if k not in schema.get("properties", {})]
    if rule is False:
        return [f"{at}.{k}: not allowed" for k in extra]
    return [e for k in extra for e in schema_errors(rule, value[k], f"{at}.{k}")]


def _one_of(rule: list[Any], value: Any, at: str, schema: Any) -> list[str]:
    matching = sum(not schema_errors(s, value, at) for s in rule)
    return [] if matching == 1 else [f"{at}: matches {matching} of oneOf"]


_CHECKS: dict[str, Any] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": lambda rule, v, at, s: [f"{at}.{k}: missing" for k in rule if k not in v],
    "enum": lambda rule, v, at, s: [] if v in rule else [f"{at}: {v!r} not in {rule}"],
    "pattern": lambda rule, v, at, s: [] if re.search(rule, v) else [f"{at}: not /{rule}/"],
    "items": lambda rule, v, at, s: [
        e for i, item in enumerate(v) for e in schema_errors(rule, item, f"{at}[{i}]")
    ],
    "anyOf": lambda rule, v, at, s: (
        [] if any(not schema_errors(x, v, at) for x in rule) else [f"{at}: matches no anyOf"]
    ),
    "oneOf": _one_of,
    "minimum": lambda rule, v, at, s: [] if v >= rule else [f"{at}: below {rule}"],
    "maximum": lambda rule, v, at, s: [] if v <= rule else [f"{at}: above {rule}"],
}


@pytest.mark.parametrize(("name", "text", "where"), list(texts()), ids=lambda x: str(x)[:24])
def test_the_json_schema_accepts_every_bundled_and_sample_recipe(
    name: str, text: str, where: Path | None
) -> None:
    assert schema_errors(recipe_json_schema(), tomllib.loads(text)) == []


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('filesystem = "xfs"', 'filesystem = "vfat"', "$.source: matches 0 of oneOf"),
        ('size = "64M"', "size = 64", "$.source: matches 0 of oneOf"),
        ('label = "data"', 'labl = "data"', "$.source: matches 0 of oneOf"),
        ('version = "1"', 'version = ".1"', "$.version: not /"),
        ('version = "1"\n', "", "$.version: missing"),
    ],
)
def test_the_json_schema_refuses_what_the_table_refuses(
    old: str, new: str, error: str, base_dir: Path
) -> None:
    assert old in SCRATCH_ALL
    load_recipe_string(SCRATCH_ALL, base_dir=base_dir)
    data = tomllib.loads(SCRATCH_ALL.replace(old, new))
    assert any(e.startswith(error) for e in schema_errors(recipe_json_schema(), data))
    with pytest.raises(RecipeError):
        load_recipe_string(SCRATCH_ALL.replace(old, new), base_dir=base_dir)


def _defaults(schema: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every (sub-schema, its default) in ``schema``."""
    if isinstance(schema, dict):
        if "default" in schema:
            yield schema, schema["default"]
        for value in schema.values():
            yield from _defaults(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _defaults(value)


def test_the_schema_is_draft_2020_12_and_its_defaults_are_valid_values() -> None:
    schema = recipe_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defaults = list(_defaults(schema))
    assert len(defaults) == sum(k.default is not None for t in all_tables(RECIPE) for k in t.keys)
    for sub, default in defaults:
        assert schema_errors(sub, default) == [], sub["description"]


def test_imagekit_recipes_schema_prints_the_json_schema() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "imagekit", "recipes", "--schema"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(printed.stdout) == recipe_json_schema()
