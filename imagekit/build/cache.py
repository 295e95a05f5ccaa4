"""The build cache: build key -> manifest or layer digest, one small file per key.

Plain files written by rename (``cache/build/<key>``) survive kill -9 and concurrent builders
(last writer wins with an identical value); an entry whose blob gc removed is simply a miss.
Beside each layer's entry, ``<key>.record`` keeps what its step printed and found, so a cached
layer's manifest says the same as a fresh one; ``<disk digest>.inspection`` keeps what inspecting
a base found, so the next step on it mounts from that instead of inspecting again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imagekit.core.atomic import replace_file
from imagekit.core.digest import canonical_json, hexpart
from imagekit.errors import ImagekitError
from imagekit.oci.layout import Descriptor, Layout


class BuildCache:
    """Build key (``sha256:<hex>``) -> what was built for it, under ``cache/build``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.directory = layout.cache_dir / "build"

    def get(self, key: str) -> Descriptor | None:
        try:
            record = json.loads((self.directory / hexpart(key)).read_text())
            descriptor = Descriptor.from_json(record)
        except (OSError, ValueError, ImagekitError):
            return None
        return descriptor if self.layout.has_blob(descriptor.digest) else None

    def put(self, key: str, descriptor: Descriptor) -> None:
        self._write(hexpart(key), descriptor.to_json())

    def record(self, key: str) -> dict[str, Any]:
        """What the step that made ``key`` printed and found; {} if never recorded."""
        try:
            record = json.loads((self.directory / f"{hexpart(key)}.record").read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def save_record(self, key: str, outcome: Mapping[str, Any]) -> None:
        self._write(f"{hexpart(key)}.record", dict(outcome))

    def inspection(self, digest: str) -> object:
        """What inspecting disk ``digest`` found (``appliance.InspectedOS`` as JSON), or None."""
        try:
            return json.loads((self.directory / f"{hexpart(digest)}.inspection").read_text())
        except (OSError, ValueError):
            return None

    def save_inspection(self, digest: str, inspected: Mapping[str, Any]) -> None:
        """Keep an inspection of a disk no step made (a base), for the next step built on it."""
        self._write(f"{hexpart(digest)}.inspection", dict(inspected))

    def _write(self, name: str, obj: Any) -> None:
        """Replace ``name`` by rename, so a reader or a kill never sees half an entry."""
        self.layout.access.make_dir(self.directory)
        replace_file(self.directory / name, canonical_json(obj), mode=self.layout.access.file_mode)
