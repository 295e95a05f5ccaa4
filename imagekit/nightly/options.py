"""``imagekit build --all``'s options and the registry tag each recipe's key is published at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.core.digest import hexpart
from imagekit.nightly.claims import LEASE
from imagekit.recipe import Recipe

if TYPE_CHECKING:
    from imagekit.net.transport import Transport
    from imagekit.sources.session import NetworkOptions

TAG_MAX = 128


def _no_network() -> NetworkOptions:
    return {}


@dataclass(frozen=True)
class NightlyOptions:
    """``imagekit build --all``'s options. ``network`` as for ``Store.pull`` (mirror, refresh,
    keys_override, ...); ``push`` is ``oci://HOST/REPO``; ``memory`` overrides MemAvailable."""

    jobs: int = 1
    push: str | None = None
    sign_key: Path | None = None
    use_cache: bool = True
    insecure: bool = False
    transport: Transport | None = None
    memory: int | None = None
    network: NetworkOptions = field(default_factory=_no_network)
    lease: float = LEASE  # seconds another builder's claim on a key holds (nightly.claims)
    poll: float = 2.0  # seconds between looks at a key another builder holds


def key_tag(recipe: Recipe, key: str, suffix: str = "") -> str:
    """The registry tag of a recipe's build for input key ``key``: ``NAME-VERSION-<hex32>``
    (``suffix`` ``.claim``: the tag of the claim on it)."""
    name = f"{recipe.name}-{recipe.version}"[: TAG_MAX - 33 - len(suffix)]
    return name + "-" + hexpart(key)[:32] + suffix
