"""Recipes: TOML files (or strings) that describe where an image comes from and how it is proven.

Validation is strict on purpose: an unknown key is almost always a typo of a security-relevant
setting (``sigature_url``), and silently ignoring it would weaken verification.

A recipe with a ``[resolve]`` table names an upstream version (``41``, ``latest``) rather than a
file: its URLs are templates that :mod:`imagekit.resolve` fills from upstream metadata.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import string
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagekit import config
from imagekit.core.refs import validate_digest, validate_name
from imagekit.errors import RecipeError
from imagekit.verify.policy import CHECKSUM_OVER_TLS, LEVELS, PINNED, SIGNED, UNVERIFIED

RECIPE_SUFFIX = ".toml"
BUNDLED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"
DISK_FORMATS = ("qcow2", "raw")
HTTP_FORMATS = (*DISK_FORMATS, "iso")  # an ISO is fetched only as an installer (kind = "kickstart")
KICKSTART_DELIVERIES = ("oemdrv", "http")
PLACEHOLDERS = ("name", "version", "arch")
RESOLVERS = ("fedora-releases", "checksum-listing", "debian-json", "ubuntu-sums")
# Placeholders of a resolving recipe: known before the file is chosen, then after.
FILE_FIELDS = ("name", "arch", "upstream_arch", "release")
RESOLVED_FIELDS = (*FILE_FIELDS, "compose", "filename")
_REGEX_FIELD = re.compile(r"\{([a-z_]+)\}")  # ``{release}`` in a regex; ``{8}`` stays a quantifier
_VERSION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}

_TOP_KEYS = {"name", "version", "arch", "description", "source", "resolve", "customize"}
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
    "level",
    "format",
    "filename",
    "mirror_root",
}
_RESOLVE_KEYS = {
    "resolver",
    "image",
    "metadata_url",
    "releases_url",
    "compose",
    "arches",
    "releases",
}
# What each resolver reads besides the image pattern (see imagekit.resolve).
_RESOLVER_NEEDS = {
    "fedora-releases": ("metadata_url", "releases_url"),
    "checksum-listing": (),
    "debian-json": ("metadata_url",),
    "ubuntu-sums": ("metadata_url", "compose"),
}


def host_arch() -> str:
    """The architecture name distributions use for this machine (x86_64, aarch64, ...)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


@dataclass(frozen=True)
class KeyPin:
    """The key files a checksum file must be signed with, and the fingerprints allowed to."""

    files: tuple[Path, ...]
    fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class ResolveSpec:
    """How a version like ``41`` or ``latest`` becomes one concrete file: the ``[resolve]`` table.

    ``image`` holds regexes for the image's file name (group ``compose``: the build/compose id);
    ``arches`` maps our arch names to upstream's; ``releases`` maps each release the recipe knows
    to the variables its templates use (``{codename}``).
    """

    resolver: str
    image: tuple[str, ...]
    metadata_url: str = ""
    releases_url: str = ""
    compose: str = ""
    arches: Mapping[str, str] = field(default_factory=dict)
    releases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpSource:
    """An image downloaded over HTTP(S) or read from a ``file://`` URL, with its evidence.

    With ``resolve`` set, the URL fields are templates and the keys are per release
    (``release_keys``); :func:`imagekit.resolve.resolve` turns it into a concrete source.
    """

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
    level: str = ""  # the verification level the recipe requires ("": whatever the evidence is)
    release_keys: Mapping[str, KeyPin] = field(default_factory=dict)
    resolve: ResolveSpec | None = None

    kind = "http"

    @property
    def required_level(self) -> str:
        """The level stated, else the one the recipe's evidence is built for."""
        if self.level:
            return self.level
        if self.keys or self.release_keys:
            return SIGNED
        if self.pinned:
            return PINNED
        return UNVERIFIED if self.insecure else ""


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


@dataclass(frozen=True)
class KickstartSource:
    """Run an installer ISO with a kickstart in a throwaway VM: the installed disk is the base.

    The installer is another recipe (``installer_recipe``, pulled and verified like any image) or
    a local ISO pinned by ``installer_sha256``. Durations are seconds, sizes bytes.
    """

    kickstart: Path
    base_dir: Path
    installer_recipe: str = ""
    installer_path: Path | None = None
    installer_sha256: str = ""
    disk_size: int = 20 << 30
    disk_format: str = "qcow2"
    memory: int = 2 << 30
    vcpus: int = 2
    timeout: float = 3600.0
    inactivity: float = 600.0
    delivery: str = "oemdrv"
    kernel_args: tuple[str, ...] = ()
    syntax: str = ""  # pykickstart version (F41, RHEL9); "" = from the recipe's version
    compress: bool = False
    force: bool = False

    kind = "kickstart"

    def load_installer(self) -> Recipe:
        """The installer ISO's recipe; only for ``installer = { recipe = ... }``."""
        return RecipeSource(self.installer_recipe, self.base_dir).load()


Source = HttpSource | ScratchSource | RecipeSource | KickstartSource


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
    pin: str = ""  # ``sha256:...`` from ``NAME:VERSION@sha256:...``: the exact image wanted

    @property
    def digest(self) -> str:
        """Identity of the recipe's meaning: its text plus the overrides applied when loading."""
        identity = f"{self.text}\0{self.name}\0{self.version}\0{self.arch}"
        if self.pin:
            identity += f"\0{self.pin}"
        return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def recipe_dirs() -> list[Path]:
    """Where bundled and user recipes are looked up, first match wins."""
    return config.recipe_dirs(BUNDLED_RECIPES)


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
    """Load a recipe from a file path or a recipe name, optionally ``name:version``.

    A trailing ``@sha256:<hex>`` pins the image file's digest, as ``imagekit inspect`` shows it.
    """
    text_target = os.fspath(target)
    pin = None
    if "@sha256:" in text_target:
        text_target, _, digest = text_target.rpartition("@")
        pin = validate_digest(digest)
    path = Path(text_target)
    if text_target.endswith(RECIPE_SUFFIX) or os.sep in text_target or path.is_file():
        if not path.is_file():
            raise RecipeError(f"recipe file {text_target!r} does not exist")
        return load_recipe_file(path, version=version, arch=arch, pin=pin)
    name, _, tagged_version = text_target.partition(":")
    recipes = bundled_recipes()
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise RecipeError(f"no recipe named {name!r}; known recipes: {known}")
    return load_recipe_file(
        recipes[name], version=version or tagged_version or None, arch=arch, pin=pin
    )


def load_recipe_file(
    path: Path, *, version: str | None = None, arch: str | None = None, pin: str | None = None
) -> Recipe:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    return load_recipe_string(
        text, base_dir=path.parent, path=path, version=version, arch=arch, pin=pin
    )


def load_recipe_string(
    text: str,
    *,
    base_dir: Path | None = None,
    path: Path | None = None,
    version: str | None = None,
    arch: str | None = None,
    pin: str | None = None,
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
    source = _source(source_table, data.get("resolve"), values, base_dir or Path.cwd(), where)
    if pin:
        if not isinstance(source, HttpSource):
            raise RecipeError(f"{where}: a @sha256 pin applies to downloaded images only")
        source = replace(source, pinned=_with_pin(source.pinned, pin, where))
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
        pin=pin or "",
    )


def describe(recipe: Recipe) -> dict[str, Any]:
    """What ``imagekit recipes`` shows: the versions, arches and level a recipe offers."""
    source = recipe.source
    info: dict[str, Any] = {
        "name": recipe.name,
        "description": recipe.description,
        "version": recipe.version,
        "kind": source.kind,
        "path": str(recipe.path) if recipe.path else None,
        "level": "",
        "resolver": None,
        "versions": [recipe.version],
        "arches": [recipe.arch],
    }
    if isinstance(source, HttpSource):
        info["level"] = source.required_level
        if source.resolve is not None:
            info["resolver"] = source.resolve.resolver
            info["versions"] = sorted(source.resolve.releases, key=version_key)
            info["arches"] = sorted(source.resolve.arches) or [recipe.arch]
    return info


def recipe_summaries() -> list[dict[str, Any]]:
    """Every recipe found, described; a broken one is listed with its error, not skipped."""
    rows: list[dict[str, Any]] = []
    for name, path in bundled_recipes().items():
        try:
            rows.append(describe(load_recipe_file(path)))
        except RecipeError as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
    return rows


def version_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders ``9 < 10`` and ``9.5-20241118.0 < 9.6-20250101.0``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.findall(r"\d+|\D+", text)
    )


def pattern_fields(pattern: str) -> set[str]:
    """The ``{field}`` placeholders of an image-name regex."""
    return set(_REGEX_FIELD.findall(pattern))


def fill_pattern(pattern: str, values: Mapping[str, str]) -> re.Pattern[str]:
    """Compile an image-name regex with its placeholders replaced by the escaped values."""
    return re.compile(_REGEX_FIELD.sub(lambda m: re.escape(values[m[1]]), pattern))


def _source(
    table: Mapping[str, Any],
    resolve_table: Any,
    values: Mapping[str, str],
    base_dir: Path,
    where: str,
) -> Source:
    kind = table.get("kind", "http")
    at = f"{where} [source]"
    if kind == "http":
        spec = None if resolve_table is None else _resolve_spec(resolve_table, f"{where} [resolve]")
        return _http_source(table, spec, values, base_dir, at)
    if resolve_table is not None:
        raise RecipeError(f"{where}: [resolve] applies to http sources only")
    if kind == "scratch":
        return _scratch_source(table, base_dir, at)
    if kind == "recipe":
        _reject_unknown(table, {"kind", "recipe"}, at)
        return RecipeSource(_string(table, "recipe", at, required=True), base_dir)
    if kind == "kickstart":
        return _kickstart_source(table, values, base_dir, at)
    raise RecipeError(
        f"{at}: unsupported source kind {kind!r} (supported: http, scratch, recipe, kickstart)"
    )


def _kickstart_source(
    table: Mapping[str, Any], values: Mapping[str, str], base_dir: Path, where: str
) -> KickstartSource:
    _reject_unknown(
        table,
        {"kind", "installer", "kickstart", "disk", "memory", "vcpus", "timeout", "inactivity"}
        | {"delivery", "kernel_args", "syntax", "compress", "force"},
        where,
    )
    installer = table.get("installer")
    if not isinstance(installer, dict):
        raise RecipeError(
            f'{where}: installer must be a table: {{ recipe = "NAME:VERSION" }} or '
            '{ path = "local.iso", sha256 = "..." }'
        )
    at = f"{where} installer"
    _reject_unknown(installer, {"recipe", "path", "sha256"}, at)
    recipe_name = _expand(_string(installer, "recipe", at), values, at)
    local = _string(installer, "path", at)
    sha256 = _string(installer, "sha256", at).lower()
    if bool(recipe_name) == bool(local):
        raise RecipeError(f"{at}: set exactly one of recipe and path")
    if local and not re.fullmatch("[0-9a-f]{64}", sha256):
        raise RecipeError(
            f"{at}: a local ISO must be pinned: sha256 = 64 hex digits (`sha256sum {local}`)"
        )
    if recipe_name and sha256:
        raise RecipeError(f"{at}: sha256 pins a local path; an installer recipe pins its own")
    installer_path = base_dir / local if local else None
    if installer_path is not None and not _is_file(installer_path):
        raise RecipeError(f"{at}: ISO {str(installer_path)!r} does not exist")
    kickstart = base_dir / _string(table, "kickstart", where, required=True)
    if not _is_file(kickstart):
        raise RecipeError(f"{where}: kickstart {str(kickstart)!r} does not exist")
    disk = table.get("disk", {})
    if not isinstance(disk, dict):
        raise RecipeError(
            f'{where}: disk must be a table like {{ size = "20G", format = "qcow2" }}'
        )
    _reject_unknown(disk, {"size", "format"}, f"{where} disk")
    disk_format = _string(disk, "format", where) or "qcow2"
    if disk_format not in DISK_FORMATS:
        raise RecipeError(f"{where}: disk format must be one of {', '.join(DISK_FORMATS)}")
    delivery = _string(table, "delivery", where) or "oemdrv"
    if delivery not in KICKSTART_DELIVERIES:
        raise RecipeError(f"{where}: delivery must be one of {', '.join(KICKSTART_DELIVERIES)}")
    vcpus = table.get("vcpus", 2)
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= 64:
        raise RecipeError(f"{where}: vcpus must be a whole number from 1 to 64")
    flags = {key: table.get(key, False) for key in ("compress", "force")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {key} must be true or false")
    kernel_args = tuple(_string_list(table, "kernel_args", where))
    if any(not arg or any(c.isspace() for c in arg) for arg in kernel_args):
        raise RecipeError(f"{where}: kernel_args must be non-empty words without spaces")
    return KickstartSource(
        kickstart=kickstart,
        base_dir=base_dir,
        installer_recipe=recipe_name,
        installer_path=installer_path,
        installer_sha256=sha256,
        disk_size=parse_size(_string(disk, "size", where) or "20G", where),
        disk_format=disk_format,
        memory=parse_size(_string(table, "memory", where) or "2G", where),
        vcpus=vcpus,
        timeout=parse_duration(_string(table, "timeout", where) or "60m", where),
        inactivity=parse_duration(_string(table, "inactivity", where) or "10m", where),
        delivery=delivery,
        kernel_args=kernel_args,
        syntax=_string(table, "syntax", where),
        compress=flags["compress"],
        force=flags["force"],
    )


def parse_duration(text: str, where: str) -> float:
    """``90s``, ``10m``, ``2h`` or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip().lower())
    if not match or float(match[1]) <= 0:
        raise RecipeError(f"{where}: duration {text!r} must be a positive number with s, m or h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _scratch_source(table: Mapping[str, Any], base_dir: Path, where: str) -> ScratchSource:
    _reject_unknown(
        table,
        {"kind", "content", "size", "partition_table", "filesystem", "label", "format"},
        where,
    )
    content = base_dir / _string(table, "content", where, required=True)
    if not _exists(content):
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
    table: Mapping[str, Any],
    spec: ResolveSpec | None,
    values: Mapping[str, str],
    base_dir: Path,
    where: str,
) -> HttpSource:
    _reject_unknown(table, _HTTP_KEYS, where)
    templates = {
        key: _string(table, key, where) for key in ("url", "checksum_url", "signature_url")
    }
    if not templates["url"]:
        raise RecipeError(f"{where}: missing required key 'url'")
    if spec is None:
        templates = {key: _expand(value, values, where) for key, value in templates.items()}
    url = templates["url"]
    checksum_url = templates["checksum_url"] or None
    signature_url = templates["signature_url"] or None
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
    keys, fingerprints, release_keys = _keys(table, spec, base_dir, where)
    insecure, level = _level(table, bool(keys or release_keys), checksum_url, pinned, where)
    disk_format = _string(table, "format", where) or "qcow2"
    if disk_format not in HTTP_FORMATS:
        raise RecipeError(f"{where}: format must be one of {', '.join(HTTP_FORMATS)}")
    mirror_root = _string(table, "mirror_root", where)
    if spec is not None:
        spec = _check_resolving(table, spec, release_keys, mirror_root, where)
        filename = ""
    else:
        mirror_root = _expand(mirror_root, values, where)
        filename = _expand(_string(table, "filename", where), values, where) or url.rsplit("/")[-1]
        if not filename or "/" in filename:
            raise RecipeError(f"{where}: cannot take a file name from URL {url!r}; set filename")
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
        level=level,
        release_keys=release_keys,
        resolve=spec,
    )


def _keys(
    table: Mapping[str, Any], spec: ResolveSpec | None, base_dir: Path, where: str
) -> tuple[tuple[Path, ...], tuple[str, ...], dict[str, KeyPin]]:
    """Fixed keys, or (``fingerprints`` as a table) one pin per release: ``{release}`` in keys."""
    templates = _string_list(table, "keys", where)
    raw = table.get("fingerprints", [])
    if not isinstance(raw, dict):
        if any("{" in template for template in templates):
            raise RecipeError(
                f"{where}: keys with {{release}} need one fingerprint per release: "
                '[source.fingerprints] with "RELEASE" = "FINGERPRINT"'
            )
        files = tuple(_key_file(base_dir / template, where) for template in templates)
        return files, _fingerprints(raw, where), {}
    if spec is None:
        raise RecipeError(f"{where}: fingerprints per release need a [resolve] table")
    if not templates:
        raise RecipeError(f"{where}: fingerprints per release need keys, e.g. 'KEY-{{release}}'")
    for template in templates:
        _check_fields(template, {"release"}, where, "keys")
    pins = {}
    for release, value in raw.items():
        found = _fingerprints(value, f"{where} fingerprints {release!r}")
        if not found:
            raise RecipeError(f"{where}: no fingerprint pinned for release {release!r}")
        paths = (base_dir / t.replace("{release}", release) for t in templates)
        pins[release] = KeyPin(tuple(_key_file(path, where) for path in paths), found)
    return (), (), pins


def _is_file(path: Path) -> bool:
    """Path.is_file(), but a name the OS refuses (ENAMETOOLONG, EACCES) is simply not there."""
    try:
        return path.is_file()
    except OSError:
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _key_file(path: Path, where: str) -> Path:
    if not _is_file(path):
        raise RecipeError(f"{where}: key file {str(path)!r} does not exist")
    return path


def _fingerprints(value: Any, where: str) -> tuple[str, ...]:
    listed = _string_list({"fingerprints": value}, "fingerprints", where)
    fingerprints = tuple(f.replace(" ", "").upper() for f in listed)
    for fingerprint in fingerprints:
        if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", fingerprint):
            raise RecipeError(f"{where}: fingerprint {fingerprint!r} is not 40 or 64 hex digits")
    return fingerprints


def _level(
    table: Mapping[str, Any],
    signed: bool,
    checksum_url: str | None,
    pinned: Mapping[str, str],
    where: str,
) -> tuple[bool, str]:
    """``insecure`` and the required ``level``, refusing combinations that cannot both hold."""
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise RecipeError(f"{where}: insecure must be true or false")
    level = _string(table, "level", where)
    if level and level not in LEVELS:
        raise RecipeError(f"{where}: level must be one of {', '.join(LEVELS)}")
    if insecure and level not in ("", UNVERIFIED):
        raise RecipeError(f"{where}: insecure = true contradicts level = {level!r}")
    insecure = insecure or level == UNVERIFIED
    if signed and level not in ("", SIGNED):
        raise RecipeError(f'{where}: keys are pinned, so the level is "signed", not {level!r}')
    if level == SIGNED and not signed:
        raise RecipeError(f'{where}: level = "signed" needs keys (and their fingerprints)')
    if level == CHECKSUM_OVER_TLS and not checksum_url:
        raise RecipeError(f'{where}: level = "checksum-over-tls" needs checksum_url')
    if level == PINNED and not pinned:
        raise RecipeError(f'{where}: level = "pinned" needs sha256 or sha512')
    if checksum_url and not (signed or insecure or pinned or level == CHECKSUM_OVER_TLS):
        raise RecipeError(
            f"{where}: checksum_url without keys proves nothing; add the signing key(s), "
            'pin a sha256, set level = "checksum-over-tls" (unsigned, fetched over HTTPS), '
            "or set insecure = true"
        )
    return insecure, level


def _with_pin(pinned: Mapping[str, str], pin: str, where: str) -> dict[str, str]:
    digest = pin.removeprefix("sha256:")
    if pinned.get("sha256", digest) != digest:
        raise RecipeError(f"{where}: the recipe pins sha256 {pinned['sha256']}, not {digest}")
    return {**pinned, "sha256": digest}


def _resolve_spec(table: Any, where: str) -> ResolveSpec:
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: must be a table")
    _reject_unknown(table, _RESOLVE_KEYS, where)
    resolver = _string(table, "resolver", where, required=True)
    if resolver not in RESOLVERS:
        raise RecipeError(f"{where}: unknown resolver {resolver!r}; known: {', '.join(RESOLVERS)}")
    needs = _RESOLVER_NEEDS[resolver]
    for key in ("metadata_url", "releases_url", "compose"):
        if key in needs and not _string(table, key, where):
            raise RecipeError(f"{where}: resolver {resolver!r} needs {key}")
        if key not in needs and key in table:
            raise RecipeError(f"{where}: resolver {resolver!r} does not use {key}")
    image = tuple(_string_list(table, "image", where))
    if not image:
        raise RecipeError(f"{where}: image must name at least one file-name regex")
    return ResolveSpec(
        resolver=resolver,
        image=image,
        metadata_url=_string(table, "metadata_url", where),
        releases_url=_string(table, "releases_url", where),
        compose=_string(table, "compose", where),
        arches=_string_table(table.get("arches", {}), f"{where} arches"),
        releases=_releases(table.get("releases", {}), f"{where} releases"),
    )


def _releases(value: Any, where: str) -> dict[str, dict[str, str]]:
    """``["9", "10"]``, or a table of release -> its template variables."""
    if isinstance(value, list):
        value = {release: {} for release in _string_list({"releases": value}, "releases", where)}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: must be a list of releases or a table of them")
    releases = {release: _string_table(v, f"{where} {release!r}") for release, v in value.items()}
    names = {frozenset(variables) for variables in releases.values()}
    if len(names) > 1:
        raise RecipeError(f"{where}: every release must set the same variables")
    for release, variables in releases.items():
        if not _VERSION_RE.fullmatch(release) or release == "latest":
            raise RecipeError(f"{where}: invalid release {release!r}")
        for variable in variables:
            if variable in (*RESOLVED_FIELDS, *PLACEHOLDERS) or not variable.isidentifier():
                raise RecipeError(f"{where}: {variable!r} cannot be a variable name")
    return releases


def _check_resolving(
    table: Mapping[str, Any],
    spec: ResolveSpec,
    release_keys: Mapping[str, KeyPin],
    mirror_root: str,
    where: str,
) -> ResolveSpec:
    """Check a resolving recipe's templates against what is known when each one is filled."""
    if "filename" in table:
        raise RecipeError(f"{where}: filename is found by the resolver; use {{filename}} in url")
    if not mirror_root or "{" in mirror_root:
        raise RecipeError(f"{where}: a resolving recipe needs a literal mirror_root")
    if spec.resolver == "checksum-listing" and not table.get("checksum_url"):
        raise RecipeError(f"{where}: resolver 'checksum-listing' reads checksum_url; set it")
    if release_keys:
        if spec.releases and set(spec.releases) != set(release_keys):
            raise RecipeError(f"{where}: [resolve] releases and fingerprints name other releases")
        spec = replace(spec, releases=spec.releases or {r: {} for r in release_keys})
    variables = set(next(iter(spec.releases.values()), {}))
    before = {*FILE_FIELDS, *variables}
    after = {*RESOLVED_FIELDS, *variables}
    evidence = before if spec.resolver == "checksum-listing" else after
    used = _check_fields(_string(table, "url", where), after, where, "url")
    used |= _check_fields(_string(table, "checksum_url", where), evidence, where, "checksum_url")
    used |= _check_fields(_string(table, "signature_url", where), evidence, where, "signature_url")
    used |= _check_fields(spec.metadata_url, before, where, "metadata_url")
    used |= _check_fields(spec.releases_url, {"name", "arch", "upstream_arch"}, where, "releases")
    for pattern in (*spec.image, *([spec.compose] if spec.compose else [])):
        fields = pattern_fields(pattern)
        if not fields <= before:
            raise RecipeError(f"{where}: regex {pattern!r} may only use {_listed(before)}")
        try:
            compiled = fill_pattern(pattern, dict.fromkeys(fields, "x"))
        except (re.error, OverflowError, RecursionError) as exc:  # {99999999999}, deep nesting
            raise RecipeError(f"{where}: invalid regex {pattern!r}: {exc}") from exc
        if pattern == spec.compose and "compose" not in compiled.groupindex:
            raise RecipeError(f"{where}: compose regex {pattern!r} needs a (?P<compose>...) group")
        used |= fields
    if unused := variables - used:
        raise RecipeError(f"{where}: release variable(s) {', '.join(sorted(unused))} are unused")
    on_mirror = [_string(table, key, where) for key in ("url", "checksum_url", "signature_url")]
    on_mirror += [spec.releases_url]
    if spec.resolver != "fedora-releases":  # Fedora's releases.json lives outside the mirror
        on_mirror.append(spec.metadata_url)
    for template in filter(None, on_mirror):
        if not template.startswith(mirror_root):
            raise RecipeError(f"{where}: {template!r} is not under mirror_root {mirror_root!r}")
    return spec


def _check_fields(template: str, allowed: set[str], where: str, key: str) -> set[str]:
    """The placeholders of a URL template; any outside ``allowed`` is an error saying why."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise RecipeError(f"{where}: malformed placeholder in {template!r}: {exc}") from exc
    if "version" in fields:
        raise RecipeError(
            f"{where}: {key} cannot use {{version}}, which may be 'latest'; use {{release}}"
        )
    if unknown := fields - allowed:
        raise RecipeError(
            f"{where}: {key} uses {_listed(unknown)}, not known there; known: {_listed(allowed)}"
        )
    return fields


def _listed(fields: Iterable[str]) -> str:
    return ", ".join("{" + f + "}" for f in sorted(fields))


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


def _string_table(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RecipeError(f"{where}: must be a table of strings")
    return dict(value)


def _expand(template: str, values: Mapping[str, str], where: str) -> str:
    """Expand ``{name} {version} {arch}``; anything else in braces is a mistake worth reporting."""
    try:
        # parse() is lazy: a lone "}" raises ValueError while iterating, so inside the try.
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in values:
                raise RecipeError(
                    f"{where}: unknown placeholder {{{field_name}}} in {template!r}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
        return template.format_map(values)
    except (ValueError, IndexError) as exc:
        raise RecipeError(f"{where}: malformed placeholder in {template!r}: {exc}") from exc
