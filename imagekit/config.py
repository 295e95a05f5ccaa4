"""Every setting that is not recipe content, and the one place imagekit reads the environment.

Precedence: a command-line flag or API argument, then the environment (``IMAGEKIT_HOME``,
``IMAGEKIT_MIRROR``), then the first config file found (``$XDG_CONFIG_HOME/imagekit/config.toml``,
``/etc/imagekit/config.toml``). An invalid value anywhere is an error naming it, never a
silent default. Nothing here decides which keys are trusted: trust is passed in by the caller,
and the config file's ``[trust]`` (keys whose signatures count, pull targets that must be signed)
is read here only for :func:`imagekit.open_store` to pass in; no environment variable changes it.
"""

from __future__ import annotations

import grp
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.errors import RecipeError

HOME_ENV = "IMAGEKIT_HOME"
MIRROR_ENV = "IMAGEKIT_MIRROR"
RECIPES_ENV = "IMAGEKIT_RECIPES"
ACCEL_ENV = "IMAGEKIT_ACCEL"
ACCELS = ("auto", "kvm", "tcg")
# The passphrase of signing keys (key generate, sign): set, even empty, it is never asked for.
KEY_PASSPHRASE_ENV = "IMAGEKIT_KEY_PASSPHRASE"
_MIRROR_SCHEMES = ("http://", "https://", "file://")
# Range connections per large download: mirrors cap each connection, several fill the line.
DEFAULT_CONNECTIONS = 4
MAX_CONNECTIONS = 16
# A config file is a few lines of TOML; config sits below core, so core.capped cannot be used.
_CONFIG_MAX = 1 << 20


@dataclass(frozen=True)
class Settings:
    """What the config file and the environment say; None where neither says anything."""

    store: Path | None = None
    mirror: str | None = None
    group: str | None = None  # the group that may read the store (None: its owner alone)
    trust_keys: tuple[Path, ...] = ()  # [trust] keys: public keys whose signatures count
    trust_require: tuple[str, ...] = ()  # [trust] require: pull targets (globs) to be signed
    connections: int = DEFAULT_CONNECTIONS  # Range connections per large download
    mirrors: tuple[str, ...] = ()  # more roots the image's bytes may come from (not evidence)


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def config_files() -> list[Path]:
    return [_config_home() / "imagekit" / "config.toml", Path("/etc/imagekit/config.toml")]


def _string(data: dict[str, Any], key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{path}: {key} must be a non-empty string, not {value!r}")
    return value


def _mirror(value: str | None, where: str) -> str | None:
    if value is not None and not value.startswith(_MIRROR_SCHEMES):
        raise RecipeError(f"{where}: mirror {value!r} must be an http://, https:// or file:// URL")
    return value


def _connections(data: dict[str, Any], path: Path) -> int:
    value = data.get("connections", DEFAULT_CONNECTIONS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONNECTIONS:
        raise RecipeError(
            f"{path}: connections must be a whole number from 1 to {MAX_CONNECTIONS} "
            f"(default {DEFAULT_CONNECTIONS}), not {value!r}"
        )
    return value


def _read_config(path: Path) -> bytes:
    """The config file's bytes; is_file() ruled out devices and FIFOs, this bounds the size."""
    with path.open("rb") as f:
        data = f.read(_CONFIG_MAX + 1)
    if len(data) > _CONFIG_MAX:
        raise RecipeError(
            f"config file {path} is larger than {_CONFIG_MAX} bytes: it is not a config file; "
            "check what the path names"
        )
    return data


def _group(value: str | None, path: Path) -> str | None:
    """A group that exists on this host: a typo must not leave the store owner-only silently."""
    if value is not None:
        try:
            grp.getgrnam(value)
        except KeyError:
            raise RecipeError(
                f"{path}: group {value!r} does not exist on this host; create it "
                f"(groupadd {value}) or remove the setting"
            ) from None
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecipeError(f"{where}: {key} must be a list of non-empty strings, not {value!r}")
    return value


def _trust(data: dict[str, Any], path: Path) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """``[trust]``: key files that exist (relative ones beside the config file) and globs of
    ``oci://`` pull targets; a glob without the scheme would never match, so it is refused."""
    table = data.get("trust", {})
    where = f"{path} [trust]"
    if not isinstance(table, dict):
        raise RecipeError(f"{path}: trust must be a table ([trust]), not {table!r}")
    unknown = sorted(set(table) - {"keys", "require"})
    if unknown:
        raise RecipeError(f"{where}: unknown setting(s) {', '.join(unknown)}; use keys, require")
    keys = tuple(path.parent / Path(k).expanduser() for k in _strings(table, "keys", where))
    for key in keys:
        if not key.is_file():
            raise RecipeError(f"{where}: key file {key} does not exist; fix the path or remove it")
    require = tuple(_strings(table, "require", where))
    for pattern in require:
        if pattern != "*" and not pattern.startswith("oci://"):
            raise RecipeError(
                f"{where}: require {pattern!r} must be an oci://HOST/REPO glob "
                '(e.g. "oci://registry.lan/prod/*") or "*"'
            )
    if require and not keys:
        raise RecipeError(f"{where}: require needs keys: list the public keys that may sign")
    return keys, require


def load_settings() -> Settings:
    """Settings from the environment over the first config file that exists."""
    store: Path | None = None
    mirror: str | None = None
    group: str | None = None
    trust: tuple[tuple[Path, ...], tuple[str, ...]] = ((), ())
    connections, mirrors = DEFAULT_CONNECTIONS, tuple[str, ...]()
    for path in config_files():
        if path.is_file():
            try:
                data = tomllib.loads(_read_config(path).decode("utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise RecipeError(f"cannot read config file {path}: {exc}") from exc
            known = {"store", "mirror", "mirrors", "connections", "group", "trust"}
            unknown = sorted(set(data) - known)
            if unknown:
                raise RecipeError(f"{path}: unknown setting(s) {', '.join(unknown)}")
            text = _string(data, "store", path)
            store = Path(text).expanduser() if text else None
            mirror = _mirror(_string(data, "mirror", path), str(path))
            group = _group(_string(data, "group", path), path)
            trust = _trust(data, path)
            connections = _connections(data, path)
            mirrors = tuple(
                _mirror(m, str(path)) or m for m in _strings(data, "mirrors", str(path))
            )
            break
    if os.environ.get(HOME_ENV):
        store = Path(os.environ[HOME_ENV]).expanduser()
    if os.environ.get(MIRROR_ENV):
        mirror = _mirror(os.environ[MIRROR_ENV], MIRROR_ENV)
    return Settings(
        store=store,
        mirror=mirror,
        group=group,
        trust_keys=trust[0],
        trust_require=trust[1],
        connections=connections,
        mirrors=mirrors,
    )


def default_store() -> Path:
    """$IMAGEKIT_HOME, else /var/lib/imagekit for root, else $XDG_DATA_HOME/imagekit."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/imagekit")
    return data_home() / "imagekit"


def data_home() -> Path:
    """$XDG_DATA_HOME (when absolute), else ~/.local/share."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"


def recipe_dirs(bundled: Path) -> list[Path]:
    """Where recipes are looked up, first match wins: $IMAGEKIT_RECIPES, the user's, bundled."""
    dirs = [Path(p) for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
    dirs.append(_config_home() / "imagekit" / "recipes")
    dirs.append(bundled)
    return dirs


def accel_choice() -> str:
    """``auto``, ``kvm`` or ``tcg`` from $IMAGEKIT_ACCEL (default ``auto``)."""
    choice = os.environ.get(ACCEL_ENV, "auto").strip().lower()
    if choice not in ACCELS:
        raise RecipeError(f"{ACCEL_ENV} must be kvm, tcg or auto, not {choice!r}")
    return choice


def host_cache_dir() -> Path:
    """Per-host facts worth keeping across runs (the KVM probe's verdict for this boot)."""
    if os.geteuid() == 0:
        return Path("/var/cache/imagekit")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagekit"


def key_passphrase() -> str | None:
    """$IMAGEKIT_KEY_PASSPHRASE when set (an empty value means an unencrypted key), else None."""
    return os.environ.get(KEY_PASSPHRASE_ENV)


def supermin_kernel() -> Path | None:
    """$SUPERMIN_KERNEL: the kernel libguestfs's appliance boots, when the user chose one."""
    value = os.environ.get("SUPERMIN_KERNEL")
    return Path(value) if value else None


AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"


def _runtime_auth_file() -> Path:
    """podman's default: ${XDG_RUNTIME_DIR}/containers/auth.json, else /run/containers/UID/."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime) / "containers" / "auth.json"
    return Path("/run/containers") / str(os.geteuid()) / "auth.json"


def registry_auth_files() -> list[Path]:
    """Registry credential files in lookup order, as podman and docker users already have them.

    $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
    $XDG_CONFIG_HOME/containers/auth.json, $DOCKER_CONFIG/config.json, ~/.docker/config.json.
    """
    files = [Path(os.environ[AUTH_FILE_ENV])] if os.environ.get(AUTH_FILE_ENV) else []
    files += [_runtime_auth_file(), _config_home() / "containers" / "auth.json"]
    if os.environ.get("DOCKER_CONFIG"):
        files.append(Path(os.environ["DOCKER_CONFIG"]) / "config.json")
    files.append(Path.home() / ".docker" / "config.json")
    return list(dict.fromkeys(files))


def login_auth_file() -> Path:
    """Where ``imagekit login`` writes: $REGISTRY_AUTH_FILE, else podman's runtime auth.json."""
    value = os.environ.get(AUTH_FILE_ENV)
    return Path(value) if value else _runtime_auth_file()
