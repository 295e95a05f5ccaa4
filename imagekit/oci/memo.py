"""Memos of what was read from blobs: a blob never changes, so a fact read from it once holds.

At 10,000 images, reading every manifest is what ``images`` and ``gc`` would spend their time
on; a memo keeps, per blob, the little they need of it (``images``: a manifest's disk, format,
size and verification; gc: the digests a blob keeps alive). One JSON file per memo in
``cache/`` maps a blob's digest to that value; it is loaded whole and written by temp + rename.
A memo is never the only copy of anything: a missing, damaged or unwritable one is rebuilt
from the blobs, and a value of the wrong shape is read from the blob again.

gc also keeps its last live set (:class:`LiveSet`, ``cache/memo-gc-live``): unlike the facts of
blobs it holds only while what it was marked from is unchanged, so it records that (index.json's
hash, the roots it names, a key of the other roots) and gc compares before use (oci.gc). One
JSON header line (counts, the body's sha256), then one root and one digest per line: a
truncated or damaged file fails the hash or the counts and is ignored, and loading it costs a
hash and a split, not a JSON parse of 30,000 entries. :class:`Swept` (``cache/memo-gc-swept``)
notes what gc's last sweep left of ``blobs/``, so a run that finds nothing changed lists nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from imagekit.core import atomic
from imagekit.core.digest import sha256_bytes
from imagekit.oci.layout import Layout

_LIVE_NAME = "memo-gc-live"
_LIVE_VERSION = 1
_LIVE_MAX = 256 << 20  # far beyond a million digests: a bigger file is not ours
_SWEPT_NAME = "memo-gc-swept"
_SWEPT_MAX = 4 << 10


class Memo:
    """The memo ``name`` of ``layout``: ``get``/``put`` by digest, ``save`` when changed."""

    def __init__(self, layout: Layout, name: str) -> None:
        self._layout = layout
        self._path = layout.cache_dir / f"memo-{name}.json"
        self._changed = False
        self._loaded: dict[str, Any] | None = None  # read on first use: a run may need none

    @property
    def _values(self) -> dict[str, Any]:
        if self._loaded is None:
            try:
                loaded = json.loads(self._path.read_bytes())
            except (OSError, ValueError):
                loaded = {}
            self._loaded = loaded if isinstance(loaded, dict) else {}
        return self._loaded

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
        if self._loaded is None:
            return  # never read, so nothing changed
        if keep is not None:
            wanted = keep if isinstance(keep, (set, frozenset, dict)) else set(keep)
            if any(d not in wanted for d in self._values):
                self._loaded = {d: v for d, v in self._values.items() if d in wanted}
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


@dataclass(frozen=True)
class LiveSet:
    """What one gc run marked, and what it marked from (oci.gc computes and compares them).

    ``others`` identifies the roots besides index.json (recorded outside roots, extra roots);
    ``index`` is the sha256 of index.json's bytes; ``roots`` what gc marked from in them
    (oci.gc: each image's digest, each signature's with the digest it signs); ``digests``
    everything marked.
    """

    others: str
    index: str
    roots: frozenset[str]
    digests: frozenset[str]

    @classmethod
    def load(cls, layout: Layout) -> LiveSet | None:
        """The recorded live set, or None when there is none or it is damaged in any way."""
        try:
            with (layout.cache_dir / _LIVE_NAME).open("rb") as f:
                data = f.read(_LIVE_MAX + 1)
        except OSError:
            return None
        head, newline, body = data.partition(b"\n")
        if not newline or len(data) > _LIVE_MAX:
            return None
        try:
            header = json.loads(head)
            if not isinstance(header, dict) or header.get("version") != _LIVE_VERSION:
                return None
            if header.get("body") != sha256_bytes(body):
                return None
            lines = body.decode("ascii").split("\n") if body else []
            roots, count = header["roots"], header["count"]
            if not (type(roots) is int and type(count) is int and roots + count == len(lines)):
                return None
            live = cls(
                header["others"],
                header["index"],
                frozenset(lines[:roots]),
                frozenset(lines[roots:]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(live.others, str) and isinstance(live.index, str)):
            return None
        return live if (len(live.roots), len(live.digests)) == (roots, count) else None

    def save(self, layout: Layout) -> None:
        """Replace the recorded live set (best effort, as :meth:`Memo.save`)."""
        lines = [*self.roots, *self.digests]
        if any("\n" in line or not line or not line.isascii() for line in lines):
            return  # not what gc marks: keep no record rather than one that reads back otherwise
        body = "\n".join(lines).encode("ascii")
        header = {
            "version": _LIVE_VERSION,
            "others": self.others,
            "index": self.index,
            "roots": len(self.roots),
            "count": len(self.digests),
            "body": sha256_bytes(body),
        }
        data = json.dumps(header, sort_keys=True).encode() + b"\n" + body
        try:
            temp = layout.new_temp()
            atomic.replace_file(
                layout.cache_dir / _LIVE_NAME, data, temp=temp, mode=layout.access.file_mode
            )
        except OSError:
            return


@dataclass(frozen=True)
class Swept:
    """What gc's last sweep left: ``blobs/`` as it was just after it (device, inode, mtime in
    ns), read ``seen_ns`` after its last change, with the live set's keys (``others``,
    ``index``, ``entries``: oci.index.lines_digest, a digest of its ``roots``). A small file,
    written after every sweep."""

    others: str
    index: str
    entries: str | None
    roots: str
    blobs: tuple[int, int, int]
    seen_ns: int

    @classmethod
    def load(cls, layout: Layout) -> Swept | None:
        """The record of the last sweep, or None when there is none or it is damaged."""
        try:
            obj = json.loads((layout.cache_dir / _SWEPT_NAME).read_bytes()[:_SWEPT_MAX])
            fields = [obj[k] for k in ("others", "index", "entries", "roots", "blobs", "seen_ns")]
            if obj.get("version") != _LIVE_VERSION:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        others, index, entries, roots, blobs, seen = fields
        if not all(isinstance(v, str) for v in (others, index, roots)):
            return None
        if not (entries is None or isinstance(entries, str)):
            return None
        if not (isinstance(blobs, list) and len(blobs) == 3 and type(seen) is int):
            return None
        if not all(type(v) is int for v in blobs):
            return None
        return cls(others, index, entries, roots, (blobs[0], blobs[1], blobs[2]), seen)

    def save(self, layout: Layout) -> None:
        """Replace the record (best effort, as :meth:`Memo.save`)."""
        obj = {"version": _LIVE_VERSION, **asdict(self), "blobs": list(self.blobs)}
        try:
            temp = layout.new_temp()
            atomic.replace_file(
                layout.cache_dir / _SWEPT_NAME,
                json.dumps(obj, sort_keys=True).encode(),
                temp=temp,
                mode=layout.access.file_mode,
            )
        except OSError:
            return
