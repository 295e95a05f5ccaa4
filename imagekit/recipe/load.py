"""Recipes: TOML files (or strings) that describe where an image comes from and how it is proven.

Validation is strict on purpose: an unknown key is almost always a typo of a security-relevant
setting (``sigature_url``), and silently ignoring it would weaken verification. Each key is
checked by the key table (:mod:`imagekit.recipe.schema`); this module checks what needs more
than one key, or the files a recipe names.

A recipe with a ``[resolve]`` table names an upstream version (``41``, ``latest``) rather than a
file: its URLs are templates that :mod:`imagekit.resolve` fills from upstream metadata.
"""

from __future__ import annotations

import platform
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from imagekit.core.capped import TEXT_MAX, read_capped
from imagekit.core.refs import validate_name
from imagekit.errors import RecipeError
from imagekit.guest.tarball import tarball_compression
from imagekit.recipe.load_acceptance import boot_test, profile_check
from imagekit.recipe.load_http import http_source
from imagekit.recipe.load_resolve import resolve_spec
from imagekit.recipe.model import (
    HttpSource,
    KickstartSource,
    Recipe,
    RecipeSource,
    ScratchSource,
    Source,
)
from imagekit.recipe.schema import FILESYSTEM_LABEL_MAX, RECIPE
from imagekit.recipe.table import Values, read_table
from imagekit.recipe.templates import expand, version_key


def host_arch() -> str:
    """The architecture name distributions use for this machine (x86_64, aarch64, ...)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


def load_recipe_file(
    path: Path, *, version: str | None = None, arch: str | None = None, pin: str | None = None
) -> Recipe:
    return load_recipe_string(
        read_recipe_text(path), base_dir=path.parent, path=path, version=version, arch=arch, pin=pin
    )


def read_recipe_text(path: Path) -> str:
    """A recipe file's text: a regular file (not a directory, device or FIFO) of UTF-8, capped."""
    data = read_capped(path, TEXT_MAX, "recipe file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe file {path} is not UTF-8 text: {exc}") from None


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
    top = read_table(RECIPE, data, where)
    name = validate_name(top["name"])
    recipe_version = version or top["version"]
    recipe_arch = arch or top["arch"] or host_arch()
    for key, value in (("version", recipe_version), ("arch", recipe_arch)):
        if not re.fullmatch(RECIPE.key(key).pattern, value):  # an override, or the host's
            raise RecipeError(f"{where}: invalid {key} {value!r}")
    values = {"name": name, "version": recipe_version, "arch": recipe_arch}
    folder = base_dir or Path.cwd()
    source = _source(top["source"], top["resolve"], values, folder, where)
    _check_offered(name, recipe_version, offered_versions(top["version"], source), where)
    if pin:
        if not isinstance(source, HttpSource):
            raise RecipeError(f"{where}: a @sha256 pin applies to downloaded images only")
        source = replace(source, pinned=_with_pin(source.pinned, pin, where))
    return Recipe(
        name=name,
        version=recipe_version,
        arch=recipe_arch,
        source=source,
        text=text,
        path=path,
        description=top["description"],
        customize=top["customize"],
        pin=pin or "",
        test=boot_test(top["test"], folder, where),
        check=profile_check(top["check"], folder, where),
    )


def offered_versions(version: str, source: Source) -> list[str] | None:
    """The versions a recipe can be asked for; None when upstream metadata alone knows them.

    A recipe without ``[resolve]`` offers its one ``version``; a resolving one its releases and
    ``latest``.
    """
    if not isinstance(source, HttpSource) or source.resolve is None:
        return [version]
    releases = source.resolve.releases
    return [*sorted(releases, key=version_key), "latest"] if releases else None


def _check_offered(name: str, version: str, offered: list[str] | None, where: str) -> None:
    """Refuse a version the recipe does not offer, before anything is asked of upstream."""
    if offered is not None and version not in offered:
        raise RecipeError(
            f"{where}: {name} has no version {version!r}; known versions: {', '.join(offered)}"
        )


def _source(
    source: Values,
    resolve: Values | None,
    values: Mapping[str, str],
    base_dir: Path,
    where: str,
) -> Source:
    kind = source["kind"]
    at = f"{where} [source]"
    if kind == "http":
        spec = None if resolve is None else resolve_spec(resolve, f"{where} [resolve]")
        return http_source(source, spec, values, base_dir, at)
    if resolve is not None:
        raise RecipeError(f"{where}: [resolve] applies to http sources only")
    if kind == "scratch":
        return _scratch_source(source, base_dir, at)
    if kind == "recipe":
        return RecipeSource(source["recipe"], base_dir)
    return _kickstart_source(source, values, base_dir, at)


def _scratch_source(source: Values, base_dir: Path, where: str) -> ScratchSource:
    content = base_dir / source["content"]
    if not _exists(content):
        raise RecipeError(f"{where}: content {str(content)!r} does not exist")
    if not content.is_dir():
        try:
            tarball_compression(content)
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from exc
    filesystem, label = source["filesystem"], source["label"]
    longest = FILESYSTEM_LABEL_MAX[filesystem]
    if len(label) > longest:
        raise RecipeError(
            f"{where}: label {label!r} must be 1 to {longest} characters for {filesystem}"
        )
    return ScratchSource(
        content=content,
        size=source["size"],
        partition_table=source["partition_table"],
        filesystem=filesystem,
        label=label,
        format=source["format"],
    )


def _kickstart_source(
    source: Values, values: Mapping[str, str], base_dir: Path, where: str
) -> KickstartSource:
    recipe_name, installer_path, sha256 = _installer(
        source["installer"], values, base_dir, f"{where} installer"
    )
    kickstart = base_dir / source["kickstart"]
    if not _is_file(kickstart):
        raise RecipeError(f"{where}: kickstart {str(kickstart)!r} does not exist")
    disk = source["disk"]
    return KickstartSource(
        kickstart=kickstart,
        base_dir=base_dir,
        installer_recipe=recipe_name,
        installer_path=installer_path,
        installer_sha256=sha256,
        disk_size=disk["size"],
        disk_format=disk["format"],
        memory=source["memory"],
        vcpus=source["vcpus"],
        timeout=source["timeout"],
        inactivity=source["inactivity"],
        delivery=source["delivery"],
        kernel_args=source["kernel_args"],
        syntax=source["syntax"],
        compress=source["compress"],
        force=source["force"],
    )


def _installer(
    installer: Values, values: Mapping[str, str], base_dir: Path, where: str
) -> tuple[str, Path | None, str]:
    """The installer recipe's name, or a local ISO and the sha256 that pins it."""
    recipe_name = expand(installer["recipe"], values, where)
    local: str = installer["path"]
    sha256: str = installer["sha256"].lower()
    if bool(recipe_name) == bool(local):
        raise RecipeError(f"{where}: set exactly one of recipe and path")
    if local and not sha256:
        raise RecipeError(
            f"{where}: a local ISO must be pinned: sha256 = 64 hex digits (`sha256sum {local}`)"
        )
    if recipe_name and sha256:
        raise RecipeError(f"{where}: sha256 pins a local path; an installer recipe pins its own")
    installer_path = base_dir / local if local else None
    if installer_path is not None and not _is_file(installer_path):
        raise RecipeError(f"{where}: ISO {str(installer_path)!r} does not exist")
    return recipe_name, installer_path, sha256


def _with_pin(pinned: Mapping[str, str], pin: str, where: str) -> dict[str, str]:
    digest = pin.removeprefix("sha256:")
    if pinned.get("sha256", digest) != digest:
        raise RecipeError(f"{where}: the recipe pins sha256 {pinned['sha256']}, not {digest}")
    return {**pinned, "sha256": digest}


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
