"""User settings that are not recipe content: where the store lives, which mirror to use.

Precedence: command-line flag, then environment (``IMAGEKIT_HOME``, ``IMAGEKIT_MIRROR``), then the
first config file found (``$XDG_CONFIG_HOME/imagekit/config.toml``, ``/etc/imagekit/config.toml``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import RecipeError


@dataclass(frozen=True)
class Settings:
    store: Path | None = None
    mirror: str | None = None


def config_files() -> list[Path]:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [config_home / "imagekit" / "config.toml", Path("/etc/imagekit/config.toml")]


def load_settings() -> Settings:
    """Settings from the environment over the first config file that exists."""
    store: Path | None = None
    mirror: str | None = None
    for path in config_files():
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise RecipeError(f"cannot read config file {path}: {exc}") from exc
            unknown = sorted(set(data) - {"store", "mirror"})
            if unknown:
                raise RecipeError(f"{path}: unknown setting(s) {', '.join(unknown)}")
            if isinstance(data.get("store"), str):
                store = Path(data["store"]).expanduser()
            if isinstance(data.get("mirror"), str):
                mirror = data["mirror"]
            break
    if os.environ.get("IMAGEKIT_HOME"):
        store = Path(os.environ["IMAGEKIT_HOME"])
    mirror = os.environ.get("IMAGEKIT_MIRROR") or mirror
    return Settings(store=store, mirror=mirror)
