"""index.json, the store's refs: the OCI image index skopeo and oras read, cheap to tag at scale.

imagekit writes it with one manifest descriptor per line (compact, sorted keys) between a
fixed head and tail. A person's diff of a tag is then one line, and a tag or untag rewrites the
file by editing lines, without parsing or re-encoding the other entries: at 10,000 refs that is
what keeps a tag cheap (benchmarks/scale.py). It is still one file written by temp + rename, so
a reader never sees half of it. A file in any other form (edited by hand, written by another
tool) is parsed and checked whole, and rewritten in this form; top-level fields other than the
three imagekit writes are kept, in an indented file of the old form.

Reads parse and check every entry, once per process while the file's bytes stay the same;
looking up one ref, or listing the names, reads the lines without parsing them (the ref
annotation is found as compact JSON writes it: a ref has no character JSON escapes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from imagekit.core.digest import sha256_bytes
from imagekit.core.locking import FileLock
from imagekit.core.refs import DIGEST_RE
from imagekit.errors import StoreError
from imagekit.oci.descriptor import Descriptor
from imagekit.oci.media import MEDIA_INDEX, REF_ANNOTATION

_HEAD = b'{\n  "manifests": [\n'
_TAIL = b'\n  ],\n  "mediaType": "' + MEDIA_INDEX.encode() + b'",\n  "schemaVersion": 2\n}\n'
_INDENT = b"    "
_SEPARATOR = b",\n"
_REF = re.compile(rb'"' + re.escape(REF_ANNOTATION.encode()) + rb'": "([^"\\]*)"')
_FIELDS = {"schemaVersion", "mediaType", "manifests"}
_DIGEST = re.compile(DIGEST_RE)


def empty() -> bytes:
    return encode([])


def encode(entries: list[dict[str, Any]]) -> bytes:
    return _HEAD + _SEPARATOR.join(_line(e) for e in entries) + _TAIL


class IndexFile:
    """``index.json`` at ``path``: entries read (cached by content) and edited under ``lock``;
    ``replace`` writes the new bytes atomically."""

    def __init__(self, path: Path, lock: Path, replace: Callable[[Path, bytes], None]) -> None:
        self.path = path
        self._lock = lock
        self._replace = replace
        self._cached: tuple[bytes, list[Descriptor]] | None = None

    def read(self) -> bytes:
        """The file's bytes, for a caller that keys something by them (gc's live set)."""
        return self._read()

    def entries(self, data: bytes | None = None) -> list[Descriptor]:
        """Every entry (of ``data``, bytes :meth:`read` returned, else of the file now),
        validated; StoreError sends the user to fsck when the file is damaged."""
        data = self._read() if data is None else data
        if self._cached is None or self._cached[0] != data:
            try:
                parsed = [Descriptor.from_json(m) for m in self._parse(data)["manifests"]]
            except StoreError as e:
                raise self._damaged(e) from e
            self._cached = (data, parsed)
        return list(self._cached[1])

    def find(self, ref: str) -> Descriptor | None:
        """The entry of ``ref`` (the last, if a hand edit left two), parsing only its line."""
        data = self._read()
        if not _line_form(data):
            found = [e for e in self.entries() if e.annotations.get(REF_ANNOTATION) == ref]
            return found[-1] if found else None
        at = data.rfind(_needle(ref))
        if at < 0:
            return None
        start = data.rfind(b"\n", 0, at) + 1
        line = data[start : data.index(b"\n", at)].removesuffix(b",")
        try:
            return Descriptor.from_json(json.loads(line))
        except (ValueError, StoreError) as e:
            raise self._damaged(e) from e

    def names(self) -> list[str]:
        """Every tagged ref, sorted, without parsing the entries."""
        data = self._read()
        if not _line_form(data):
            found = {e.annotations.get(REF_ANNOTATION) for e in self.entries()}
            return sorted(r for r in found if r is not None)
        return sorted({m[1].decode(errors="replace") for m in _REF.finditer(data, len(_HEAD))})

    def edit(self, drop: Collection[str], add: Descriptor | None = None) -> list[Descriptor]:
        """Remove the entries of the refs in ``drop``, then append ``add``; returns the removed.

        Under the index lock, so concurrent tags never lose each other's entries.
        """
        with FileLock(self._lock):
            data = self._read()
            lines = _lines(data)
            if lines is None:
                index = self._parse(data, check_entries=True)
                if set(index) - _FIELDS:  # someone's own top-level fields: keep them
                    return self._edit_whole(index, drop, add)
                lines = [_line(m) for m in index["manifests"]]
            kept: list[bytes] = []
            removed: list[bytes] = []
            for line in lines:
                (removed if _ref_in(line) in drop else kept).append(line)
            try:
                gone = [Descriptor.from_json(json.loads(line)) for line in removed]
            except (ValueError, StoreError) as e:
                raise self._damaged(e) from e
            if add is not None:
                kept.append(_line(add.to_json()))
            self._replace(self.path, _HEAD + _SEPARATOR.join(kept) + _TAIL)
        return gone

    def _edit_whole(
        self, index: dict[str, Any], drop: Collection[str], add: Descriptor | None
    ) -> list[Descriptor]:
        manifests = index["manifests"]
        removed = [m for m in manifests if _ref_of(m) in drop]
        index["manifests"] = [m for m in manifests if _ref_of(m) not in drop]
        if add is not None:
            index["manifests"].append(add.to_json())
        text = json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        self._replace(self.path, text.encode())
        return [Descriptor.from_json(m) for m in removed]

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise self._damaged(e) from e

    def _parse(self, data: bytes, *, check_entries: bool = False) -> dict[str, Any]:
        """The index as JSON; its entries are checked by the caller's Descriptors, or here."""
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
                raise StoreError("not an OCI index with schemaVersion 2")
            if not isinstance(obj.get("manifests"), list):
                raise StoreError("'manifests' is not a list")
            for entry in obj["manifests"] if check_entries else ():
                Descriptor.from_json(entry)
        except (ValueError, StoreError) as e:
            raise self._damaged(e) from e
        return obj

    def _damaged(self, error: Exception) -> StoreError:
        return StoreError(
            f"{self.path} is damaged ({error}); run `imagekit fsck`, then restore it "
            "from a backup or re-tag your images"
        )


def lines_digest(data: bytes) -> str | None:
    """A digest of the entries of ``data`` in imagekit's form, whatever their order (None: in
    another form). A retag of a ref to the manifest it named moves its line and changes the
    bytes, not this: a caller keyed by the entries (gc) compares it without parsing them."""
    lines = _lines(data)
    if lines is None:
        return None
    return sha256_bytes(b"\n".join(sorted(lines)))


def refs_and_digests(data: bytes) -> list[tuple[str | None, str]] | None:
    """Each entry's ref (None: untagged) and digest, for a caller that needs no more (gc): no
    Descriptor is built, so at 10,000 refs this costs a JSON parse, not a check of every field.
    None when the file or an entry has another shape: :meth:`IndexFile.entries` says why.
    """
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    manifests = obj.get("manifests") if isinstance(obj, dict) else None
    if not isinstance(manifests, list) or obj.get("schemaVersion") != 2:
        return None
    found = []
    is_digest = _DIGEST.fullmatch
    for entry in manifests:
        digest = entry.get("digest") if type(entry) is dict else None
        if type(digest) is not str or not is_digest(digest):
            return None
        annotations = entry.get("annotations")
        ref = annotations.get(REF_ANNOTATION) if type(annotations) is dict else None
        found.append((ref if type(ref) is str else None, digest))
    return found


def _line(entry: dict[str, Any]) -> bytes:
    return _INDENT + json.dumps(entry, sort_keys=True, ensure_ascii=False).encode()


def _line_form(data: bytes) -> bool:
    """Whether ``data`` is in imagekit's form as far as a lookup needs: the head, the tail, and
    every newline between them a separator of entries (counted at C speed, nothing parsed)."""
    if not (data.startswith(_HEAD) and data.endswith(_TAIL)):
        return False
    start, end = len(_HEAD), len(data) - len(_TAIL)
    return data.count(b"\n", start, end) == data.count(_SEPARATOR, start, end)


def _lines(data: bytes) -> list[bytes] | None:
    """The entry lines of a file in imagekit's form, or None when it is in another form."""
    if not (data.startswith(_HEAD) and data.endswith(_TAIL)):
        return None
    body = data[len(_HEAD) : len(data) - len(_TAIL)]
    lines = body.split(_SEPARATOR) if body else []
    for line in lines:
        if not line.startswith(_INDENT + b"{") or not line.endswith(b"}") or b"\n" in line:
            return None
    return lines


def _needle(ref: str) -> bytes:
    return b'"' + REF_ANNOTATION.encode() + b'": ' + json.dumps(ref, ensure_ascii=False).encode()


def _ref_in(line: bytes) -> str | None:
    """The ref a compact entry line names (a ref has no character JSON escapes)."""
    found = _REF.search(line)
    return found[1].decode(errors="replace") if found else None


def _ref_of(entry: Any) -> str | None:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    ref = annotations.get(REF_ANNOTATION) if isinstance(annotations, dict) else None
    return ref if isinstance(ref, str) else None
