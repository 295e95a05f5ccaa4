"""Recipes: TOML files (or strings) that describe where an image comes from and how it is proven.

Validation is strict on purpose: an unknown key is almost always a typo of a security-relevant
setting (``sigature_url``), and silently ignoring it would weaken verification.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.errors import RecipeError
from imagekit.refs import validate_name

RECIPE_SUFFIX = ".toml"
DISK_FORMATS = ("qcow2", "raw")
PLACEHOLDERS = ("name", "version", "arch")
_VERSION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}

_TOP_KEYS = {"name", "version", "arch", "description", "source", "customize"}
_HTTP_KEYS = {
    "kind",
    "url",
    "checksum_url",
    "signature_url",
    "keys",
    "fingerprints",
    "sha256",
    "sha512",
    "insecure",
    "format",
    "filename",
    "mirror_root",
}


def host_arch() -> str:
    """The architecture name distributions use for this machine (x86_64, aarch64, ...)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


@dataclass(frozen=True)
class HttpSource:
    """An image downloaded over HTTP(S) or read from a ``file://`` URL, with its evidence."""

    url: str
    checksum_url: str | None = None
    signature_url: str | None = None
    keys: tuple[Path, ...] = ()
    fingerprints: tuple[str, ...] = ()
    pinned: Mapping[str, str] = field(default_factory=dict)  # algorithm -> hex
    insecure: bool = False
    format: str = "qcow2"
    filename: str = ""  # the name the checksum file lists; defaults to the URL's last component
    mirror_root: str = ""  # the URL prefix that ``--mirror`` replaces

    kind = "http"


@dataclass(frozen=True)
class ScratchSource:
    """A fresh disk made locally and filled from a directory or tarball: no network at all."""

    content: Path
    size: int
    partition_table: str = "gpt"
    filesystem: str = "ext4"
    label: str = "root"
    format: str = "qcow2"

    kind = "scratch"


@dataclass(frozen=True)
class RecipeSource:
    """Start from another recipe's image (a file path or a bundled ``name[:version]``)."""

    recipe: str
    base_dir: Path

    kind = "recipe"

    def load(self) -> Recipe:
        """The base recipe; paths are relative to the recipe that names it."""
        candidate = self.base_dir / self.recipe
        if self.recipe.endswith(RECIPE_SUFFIX) or "/" in self.recipe:
            return load_recipe_file(candidate)
        return load_recipe(self.recipe)


Source = HttpSource | ScratchSource | RecipeSource


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe. ``text`` is kept verbatim: it is part of the provenance."""

    name: str
    version: str
    arch: str
    source: Source
    text: str
    path: Path | None = None
    description: str = ""
    customize: tuple[Mapping[str, Any], ...] = ()

    @property
    def digest(self) -> str:
        """Identity of the recipe's meaning: its text plus the overrides applied when loading."""
        identity = f"{self.text}\0{self.name}\0{self.version}\0{self.arch}"
        return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def recipe_dirs() -> list[Path]:
    """Where bundled and user recipes are looked up, first match wins."""
    dirs = [Path(p) for p in os.environ.get("IMAGEKIT_RECIPES", "").split(os.pathsep) if p]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    dirs.append(config_home / "imagekit" / "recipes")
    dirs.append(Path(__file__).resolve().parent.parent / "recipes")
    return dirs


def bundled_recipes() -> dict[str, Path]:
    """Recipe name -> file, across all recipe directories (earlier directories win)."""
    found: dict[str, Path] = {}
    for directory in recipe_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*" + RECIPE_SUFFIX)):
                found.setdefault(path.stem, path)
    return found


def load_recipe(
    target: str | os.PathLike[str], *, version: str | None = None, arch: str | None = None
) -> Recipe:
    """Load a recipe from a file path or a recipe name, optionally ``name:version``."""
    text_target = os.fspath(target)
    path = Path(text_target)
    if text_target.endswith(RECIPE_SUFFIX) or os.sep in text_target or path.is_file():
        if not path.is_file():
            raise RecipeError(f"recipe file {text_target!r} does not exist")
        return load_recipe_file(path, version=version, arch=arch)
    name, _, tagged_version = text_target.partition(":")
    recipes = bundled_recipes()
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise RecipeError(f"no recipe named {name!r}; known recipes: {known}")
    return load_recipe_file(recipes[name], version=version or tagged_version or None, arch=arch)


def load_recipe_file(path: Path, *, version: str | None = None, arch: str | None = None) -> Recipe:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    return load_recipe_string(text, base_dir=path.parent, path=path, version=version, arch=arch)


def load_recipe_string(
    text: str,
    *,
    base_dir: Path | None = None,
    path: Path | None = None,
    version: str | None = None,
    arch: str | None = None,
) -> Recipe:
    """Parse recipe text; relative key paths resolve against ``base_dir`` (default: cwd)."""
    where = str(path) if path else "recipe"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{where}: invalid TOML: {exc}") from exc
    _reject_unknown(data, _TOP_KEYS, where)
    name = validate_name(_string(data, "name", where, required=True))
    recipe_version = version or _string(data, "version", where, required=True)
    if not _VERSION_RE.fullmatch(recipe_version):
        raise RecipeError(f"{where}: invalid version {recipe_version!r}")
    recipe_arch = arch or _string(data, "arch", where) or host_arch()
    if not re.fullmatch(r"[a-z0-9_]+", recipe_arch):
        raise RecipeError(f"{where}: invalid arch {recipe_arch!r}")
    values = {"name": name, "version": recipe_version, "arch": recipe_arch}
    source_table = data.get("source")
    if not isinstance(source_table, dict):
        raise RecipeError(f"{where}: missing [source] table")
    source = _source(source_table, values, base_dir or Path.cwd(), f"{where} [source]")
    steps = data.get("customize", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise RecipeError(f"{where}: customize must be a list of [[customize]] tables")
    return Recipe(
        name=name,
        version=recipe_version,
        arch=recipe_arch,
        source=source,
        text=text,
        path=path,
        description=_string(data, "description", where),
        customize=tuple(steps),
    )


def _source(
    table: Mapping[str, Any], values: Mapping[str, str], base_dir: Path, where: str
) -> Source:
    kind = table.get("kind", "http")
    if kind == "http":
        return _http_source(table, values, base_dir, where)
    if kind == "scratch":
        return _scratch_source(table, base_dir, where)
    if kind == "recipe":
        _reject_unknown(table, {"kind", "recipe"}, where)
        return RecipeSource(_string(table, "recipe", where, required=True), base_dir)
    raise RecipeError(
        f"{where}: unsupported source kind {kind!r} (supported: http, scratch, recipe)"
    )


def _scratch_source(table: Mapping[str, Any], base_dir: Path, where: str) -> ScratchSource:
    _reject_unknown(
        table,
        {"kind", "content", "size", "partition_table", "filesystem", "label", "format"},
        where,
    )
    content = base_dir / _string(table, "content", where, required=True)
    if not content.exists():
        raise RecipeError(f"{where}: content {str(content)!r} does not exist")
    partition_table = _string(table, "partition_table", where) or "gpt"
    if partition_table not in ("gpt", "mbr"):
        raise RecipeError(f"{where}: partition_table must be gpt or mbr")
    filesystem = _string(table, "filesystem", where) or "ext4"
    if filesystem not in ("ext4", "ext3", "ext2", "xfs", "btrfs", "vfat"):
        raise RecipeError(f"{where}: unsupported filesystem {filesystem!r}")
    disk_format = _string(table, "format", where) or "qcow2"
    if disk_format not in DISK_FORMATS:
        raise RecipeError(f"{where}: format must be one of {', '.join(DISK_FORMATS)}")
    label = _string(table, "label", where) or "root"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", label):
        raise RecipeError(f"{where}: label must be 1-16 letters, digits, '_' or '-'")
    return ScratchSource(
        content=content,
        size=parse_size(_string(table, "size", where) or "1G", where),
        partition_table=partition_table,
        filesystem=filesystem,
        label=label,
        format=disk_format,
    )


def parse_size(text: str, where: str) -> int:
    """``512M``, ``20G``, ``1T`` or plain bytes, in binary units as qemu-img reads them."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not match:
        raise RecipeError(f"{where}: size {text!r} must be a number with K, M, G or T")
    exponent = " KMGT".index(match[2] or " ")
    return int(match[1]) << (10 * exponent)


def _http_source(
    table: Mapping[str, Any], values: Mapping[str, str], base_dir: Path, where: str
) -> HttpSource:
    _reject_unknown(table, _HTTP_KEYS, where)
    url = _expand(_string(table, "url", where, required=True), values, where)
    checksum_url = _expand(_string(table, "checksum_url", where), values, where) or None
    signature_url = _expand(_string(table, "signature_url", where), values, where) or None
    for candidate in (url, checksum_url, signature_url):
        if candidate and not candidate.startswith(("https://", "http://", "file://")):
            raise RecipeError(f"{where}: URL {candidate!r} must be https://, http:// or file://")
    if signature_url and not checksum_url:
        raise RecipeError(f"{where}: signature_url needs checksum_url (the file it signs)")
    pinned = {}
    for algorithm, length in _HEX_LENGTH.items():
        digest = _string(table, algorithm, where).lower()
        if digest:
            if not re.fullmatch(f"[0-9a-f]{{{length}}}", digest):
                raise RecipeError(f"{where}: {algorithm} must be {length} hex digits")
            pinned[algorithm] = digest
    keys = tuple(base_dir / k for k in _string_list(table, "keys", where))
    for key in keys:
        if not key.is_file():
            raise RecipeError(f"{where}: key file {str(key)!r} does not exist")
    fingerprints = tuple(
        f.replace(" ", "").upper() for f in _string_list(table, "fingerprints", where)
    )
    for fingerprint in fingerprints:
        if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", fingerprint):
            raise RecipeError(f"{where}: fingerprint {fingerprint!r} is not 40 or 64 hex digits")
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise RecipeError(f"{where}: insecure must be true or false")
    if checksum_url and not keys and not insecure and not pinned:
        raise RecipeError(
            f"{where}: checksum_url without keys proves nothing; add the signing key(s), "
            "pin a sha256, or set insecure = true"
        )
    disk_format = _string(table, "format", where) or "qcow2"
    if disk_format not in DISK_FORMATS:
        raise RecipeError(f"{where}: format must be one of {', '.join(DISK_FORMATS)}")
    filename = _expand(_string(table, "filename", where), values, where) or url.rsplit("/", 1)[1]
    if not filename or "/" in filename:
        raise RecipeError(f"{where}: cannot take a file name from URL {url!r}; set filename")
    mirror_root = _expand(_string(table, "mirror_root", where), values, where)
    if mirror_root and not url.startswith(mirror_root):
        raise RecipeError(f"{where}: url does not start with mirror_root {mirror_root!r}")
    return HttpSource(
        url=url,
        checksum_url=checksum_url,
        signature_url=signature_url,
        keys=keys,
        fingerprints=fingerprints,
        pinned=pinned,
        insecure=insecure,
        format=disk_format,
        filename=filename,
        mirror_root=mirror_root or url.rsplit("/", 1)[0] + "/",
    )


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _string(table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = table.get(key)
    if value is None:
        if required:
            raise RecipeError(f"{where}: missing required key {key!r}")
        return ""
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise RecipeError(f"{where}: {key} must be a single-line string")
    return value


def _string_list(table: Mapping[str, Any], key: str, where: str) -> Sequence[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{where}: {key} must be a list of strings")
    return value


def _expand(template: str, values: Mapping[str, str], where: str) -> str:
    """Expand ``{name} {version} {arch}``; anything else in braces is a mistake worth reporting."""
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is not None and field_name not in values:
            raise RecipeError(
                f"{where}: unknown placeholder {{{field_name}}} in {template!r}; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
    try:
        return template.format_map(values)
    except (ValueError, IndexError) as exc:
        raise RecipeError(f"{where}: malformed placeholder in {template!r}: {exc}") from exc
