"""Profiles: what an edition looks like, as data files, each expectation citing where it is from.

A profile (``recipes/profiles/NAME.toml``, or any ``.toml`` file) names its ``[sources.ID]``
(title, URL, whether the expectation was written from memory of the source rather than checked
against it) and its ``[[checks]]``: an ``id``, what to ``read`` (and its ``name``: a package,
unit, sshd keyword or mount point), the ``expect``-ed value, ``required`` or advisory, and the
``source`` it comes from. Loading is strict, as for recipes: a misspelt key or an expectation
a reader cannot produce would otherwise make a check that silently never passes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.core.digest import sha256_bytes
from imagekit.core.refs import NAME_RE
from imagekit.errors import RecipeError
from imagekit.recipe import forms, recipe_dirs
from imagekit.recipe.forms import Form, Invalid
from imagekit.recipe.table import Key, Table, one_of, read_table

PROFILE_DIR = "profiles"  # below each recipe directory
PROFILE_SUFFIX = ".toml"


@dataclass(frozen=True)
class Reads:
    """One kind of fact a check reads: whether it needs a ``name``, and the values it yields."""

    name: str  # what ``name`` is for this kind ("" = takes none)
    values: tuple[str, ...] = ()  # the values found can take ("" = any text)
    flag: bool = False  # found is true or false
    fold: bool = False  # compared without regard to case (sshd's yes/no/prohibit-password)


READS = {
    "package": Reads("the package", ("installed", "absent")),
    "unit": Reads("the systemd unit", ("enabled", "disabled", "masked")),
    "firewalld-zone": Reads(""),
    "root-on-lvm": Reads("", flag=True),
    "filesystem": Reads("the mount point"),
    "selinux": Reads("", ("enforcing", "permissive", "disabled")),
    "sshd": Reads("the sshd_config keyword", fold=True),
    "cloud-init": Reads("", flag=True),
}


@dataclass(frozen=True)
class Source:
    """Where expectations come from; ``from_memory``: written from recall, not checked."""

    id: str
    title: str
    url: str
    from_memory: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "url": self.url,
            "from_memory": self.from_memory,
            "note": self.note,
        }


@dataclass(frozen=True)
class Check:
    """One expectation: read ``read`` (of ``name``) and compare the value with ``expect``."""

    id: str
    read: str
    expect: str | bool
    source: Source
    name: str = ""
    required: bool = True
    note: str = ""

    @property
    def subject(self) -> str:
        """What is read, in words: ``package cockpit``, ``selinux``."""
        return f"{self.read} {self.name}".strip()


@dataclass(frozen=True)
class Profile:
    """A loaded profile; ``digest`` is its file's sha256 (a changed profile is checked again)."""

    name: str
    description: str
    checks: tuple[Check, ...]
    sources: Mapping[str, Source]
    digest: str
    path: Path | None = None
    notes: str = ""


def _text(value: Any, check: Any) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise Invalid("a string")
    return value


def _expected(value: Any, check: Any) -> str | bool:
    if not isinstance(value, str | bool) or value == "":
        raise Invalid("a non-empty string, or true or false")
    return value


def _tables(value: Any, check: Any) -> Any:
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    if isinstance(value, dict) and all(isinstance(item, dict) for item in value.values()):
        return value
    raise Invalid("tables")


TEXT = Form("a string", _text, lambda one: {"type": "string"}, "")
EXPECTED = Form("a string, or true or false", _expected, lambda one: {}, None)
TABLES = Form("tables", _tables, lambda one: {}, None)
_ID = Key("id", forms.LINE, "", required=True, pattern=NAME_RE, pattern_says="a lowercase id")

PROFILE = Table(
    "",
    "profile",
    (
        Key("name", forms.LINE, "", required=True, pattern=NAME_RE, pattern_says="a name"),
        Key("description", forms.LINE, ""),
        Key("notes", TEXT, ""),
        Key("sources", TABLES, "", required=True),
        Key("checks", TABLES, "", required=True),
    ),
)
SOURCE = Table(
    "source",
    "source",
    (
        Key("title", forms.LINE, "", required=True),
        Key("url", forms.LINE, "", required=True),
        Key("from_memory", forms.FLAG, "", default=False),
        Key("note", TEXT, ""),
    ),
)
CHECK = Table(
    "check",
    "check",
    (
        _ID,
        Key("read", forms.LINE, "", required=True, choices=tuple(READS)),
        Key("name", forms.LINE, ""),
        Key("expect", EXPECTED, "", required=True),
        Key("required", forms.FLAG, "", default=True),
        Key("source", forms.LINE, "", required=True),
        Key("note", TEXT, ""),
    ),
)


def bundled_profiles() -> dict[str, Path]:
    """Profile name -> file across the recipe directories (earlier directories win)."""
    found: dict[str, Path] = {}
    for directory in recipe_dirs():
        folder = directory / PROFILE_DIR
        if folder.is_dir():
            for path in sorted(folder.glob("*" + PROFILE_SUFFIX)):
                found.setdefault(path.stem, path)
    return found


def load_profile(target: str | Path, *, base_dir: Path | None = None) -> Profile:
    """A profile by name (``fedora-server``) or file (relative to ``base_dir``, default cwd)."""
    text_target = str(target)
    if text_target.endswith(PROFILE_SUFFIX) or "/" in text_target:
        path = (base_dir or Path.cwd()) / Path(text_target).expanduser()
    else:
        known = bundled_profiles()
        if text_target not in known:
            names = ", ".join(sorted(known)) or "none"
            raise RecipeError(f"no profile named {text_target!r}; known profiles: {names}")
        path = known[text_target]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    return parse_profile(data, path)


def parse_profile(data: bytes, path: Path | None = None) -> Profile:
    """Validate a profile file's bytes; RecipeError naming the file, the check and the key."""
    where = str(path) if path else "profile"
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{where}: invalid TOML: {exc}") from exc
    top = read_table(PROFILE, document, where)
    if not isinstance(top["sources"], dict) or not isinstance(top["checks"], list):
        raise RecipeError(f"{where}: give [sources.ID] tables and [[checks]] tables")
    sources = {
        source_id: _source(source_id, table, f"{where} [sources.{source_id}]")
        for source_id, table in top["sources"].items()
    }
    checks = tuple(
        _check(table, sources, f"{where} checks[{number}]")
        for number, table in enumerate(top["checks"])
    )
    ids = [check.id for check in checks]
    if duplicated := sorted({i for i in ids if ids.count(i) > 1}):
        raise RecipeError(f"{where}: check id(s) {', '.join(duplicated)} used more than once")
    if not checks:
        raise RecipeError(f"{where}: a profile needs at least one [[checks]] table")
    return Profile(
        top["name"], top["description"], checks, sources, sha256_bytes(data), path, top["notes"]
    )


def _source(source_id: str, table: Mapping[str, Any], where: str) -> Source:
    values = read_table(SOURCE, table, where)
    return Source(source_id, values["title"], values["url"], values["from_memory"], values["note"])


def _check(table: Mapping[str, Any], sources: Mapping[str, Source], where: str) -> Check:
    values = read_table(CHECK, table, where)
    where = f"{where} ({values['id']})"
    reads = READS[values["read"]]
    name: str = values["name"]
    if bool(reads.name) != bool(name):
        needs = f"needs name = {reads.name}" if reads.name else "takes no name"
        raise RecipeError(f"{where}: read = {values['read']!r} {needs}")
    expect = values["expect"]
    if reads.flag != isinstance(expect, bool) or (reads.values and expect not in reads.values):
        wanted = "true or false" if reads.flag else one_of(reads.values) if reads.values else ""
        raise RecipeError(f"{where}: expect must be {wanted or 'a string'}, not {expect!r}")
    if values["source"] not in sources:
        raise RecipeError(
            f"{where}: source {values['source']!r} is not one of the profile's [sources.ID]: "
            + ", ".join(sorted(sources))
        )
    return Check(
        id=values["id"],
        read=values["read"],
        expect=expect,
        source=sources[values["source"]],
        name=name,
        required=values["required"],
        note=values["note"],
    )
