"""What one pull or build shares: its network options, the keys it trusts, one transport."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from imagekit.config import DEFAULT_CONNECTIONS
from imagekit.net.download import Downloader
from imagekit.net.metadata import DEFAULT_TTL, UpstreamCache
from imagekit.net.transport import Transport
from imagekit.oci.layout import Layout
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.recipe import Recipe
from imagekit.resolve.resolve import Target, resolve


@dataclass(frozen=True)
class FetchOptions:
    """How a pull may use the network, and whose keys it trusts.

    ``refresh`` re-checks upstream metadata and ignores a matching ref; ``offline`` makes no
    request (cached metadata, stored blobs only); ``allow_loopback_http`` lets checksum-over-tls
    recipes read checksum files over plain http from 127.0.0.1/localhost (tests, a local proxy);
    ``keys_override`` replaces every recipe's pinned keys, recorded in provenance;
    ``connections`` is how many Range connections a large image may use, ``mirrors`` more roots
    (beside the recipe's ``mirrors``) its bytes may come from.
    """

    mirror: str | None = None
    connections: int = DEFAULT_CONNECTIONS
    mirrors: tuple[str, ...] = ()
    refresh: bool = False
    offline: bool = False
    allow_loopback_http: bool = False
    metadata_ttl: float = DEFAULT_TTL
    keys_override: tuple[Path, ...] = ()


class NetworkOptions(TypedDict, total=False):
    """:class:`FetchOptions` as keyword arguments of the public API (``Store.pull(mirror=...)``)."""

    mirror: str | None
    connections: int
    mirrors: tuple[str, ...]
    refresh: bool
    offline: bool
    allow_loopback_http: bool
    metadata_ttl: float
    keys_override: tuple[Path, ...]


@dataclass
class Session:
    """What one pull or build shares: the store, the options, one transport and metadata cache."""

    layout: Layout
    options: FetchOptions
    progress: ProgressCallback = ignore_progress
    transport: Transport = field(default_factory=Transport)

    @property
    def downloader(self) -> Downloader:
        return Downloader(
            self.layout.tmp_dir, transport=self.transport, connections=self.options.connections
        )

    @contextmanager
    def upstream(self) -> Iterator[UpstreamCache]:
        with UpstreamCache(
            self.layout.cache_dir / "upstream",
            self.transport,
            ttl=self.options.metadata_ttl,
            refresh=self.options.refresh,
            offline=self.options.offline,
        ) as cache:
            yield cache

    def resolve(self, recipe: Recipe, cache: UpstreamCache) -> Target:
        return resolve(
            recipe,
            cache=cache,
            mirror=self.options.mirror,
            keys_override=self.options.keys_override,
        )
