"""Memos of what was read from blobs: a blob never changes, so a fact read from it once holds.

At 10,000 images, reading every manifest is what ``images`` and ``gc`` would spend their time
on; a memo keeps, per blob, the little they need of it (``images``: a manifest's disk, format,
size and verification; gc: the digests a blob keeps alive). One JSON file per memo in
``cache/`` maps a blob's digest to that value; it is loaded whole and written by temp + rename.
A memo is never the only copy of anything: a missing, damaged or unwritable one is rebuilt
from the blobs, and a value of the wrong shape is read from the blob again.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from imagekit.core import atomic
from imagekit.oci.layout import Layout


class Memo:
    """The memo ``name`` of ``layout``: ``get``/``put`` by digest, ``save`` when changed."""

    def __init__(self, layout: Layout, name: str) -> None:
        self._layout = layout
        self._path = layout.cache_dir / f"memo-{name}.json"
        self._changed = False
        try:
            loaded = json.loads(self._path.read_bytes())
        except (OSError, ValueError):
            loaded = {}
        self._values: dict[str, Any] = loaded if isinstance(loaded, dict) else {}

    def get(self, digest: str) -> Any:
        """The value recorded for ``digest``, or None."""
        return self._values.get(digest)

    def put(self, digest: str, value: Any) -> None:
        self._values[digest] = value
        self._changed = True

    def save(self, keep: Collection[str] | None = None) -> None:
        """Write the memo if it changed, keeping only the digests in ``keep`` (None: all).

        Best effort: a store this user may only read (a group member) keeps no memo.
        """
        if keep is not None:
            wanted = keep if isinstance(keep, (set, frozenset, dict)) else set(keep)
            if any(d not in wanted for d in self._values):
                self._values = {d: v for d, v in self._values.items() if d in wanted}
                self._changed = True
        if not self._changed:
            return
        data = json.dumps(self._values, separators=(",", ":"), sort_keys=True).encode()
        try:
            temp = self._layout.new_temp()
            atomic.replace_file(self._path, data, temp=temp, mode=self._layout.access.file_mode)
        except OSError:
            return
        self._changed = False
