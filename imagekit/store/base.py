"""What every part of :class:`imagekit.store.Store` stands on: the layout, the defaults a store
carries (mirror, connections, trust) and the fetch session its workflows share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit import config
from imagekit.image import Image
from imagekit.oci.layout import Layout
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.verify.trust import TrustPolicy

# The workflows load their stages on first use: `imagekit --help` and a cache-hit pull must not
# pay for the appliance, installer and download code (benchmarks/pull.py holds the start-up time).
if TYPE_CHECKING:
    from imagekit.net.transport import Transport
    from imagekit.sources.session import NetworkOptions, Session
    from imagekit.verify.keys import PrivateKey


class StoreBase(Layout):
    """The layout plus a store's defaults; :class:`imagekit.store.Store` documents them."""

    def __init__(
        self,
        root: Path,
        *,
        mirror: str | None = None,
        group: str | None = None,
        trust: TrustPolicy | None = None,
        connections: int = config.DEFAULT_CONNECTIONS,
        mirrors: tuple[str, ...] = (),
    ) -> None:
        super().__init__(root, group=group)
        self.mirror = mirror
        self.connections = connections
        self.mirrors = mirrors
        self.trust = trust or TrustPolicy()

    def _session(
        self,
        progress: ProgressCallback | None,
        network: NetworkOptions,
        transport: Transport | None = None,
    ) -> Session:
        from imagekit.net.transport import Transport
        from imagekit.sources.session import FetchOptions, Session

        options = FetchOptions(**network)
        if "connections" not in network:
            options = replace(options, connections=self.connections)
        if "mirrors" not in network:
            options = replace(options, mirrors=self.mirrors)
        if options.mirror is None:
            options = replace(options, mirror=self.mirror)
        return Session(self, options, progress or ignore_progress, transport or Transport())

    def image(self, ref_or_digest: str) -> Image:
        """The stored image a ref or manifest digest names."""
        return Image.load(self, ref_or_digest)

    @staticmethod
    def _signing_key(path: Path, passphrase: str | None) -> PrivateKey:
        from imagekit.verify import keys

        return keys.load_private_key(path, passphrase)
