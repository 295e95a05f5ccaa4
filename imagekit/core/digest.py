"""Hashing, written once: files, streams, trees, and the canonical JSON that identities hash.

Every digest imagekit records is ``sha256:<hex>`` (OCI's form); :func:`hexpart` gives the bare
hex where a file name needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """One byte form per JSON value, so equal configs, manifests and keys get equal digests."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def identity(obj: Any) -> str:
    """``sha256:<hex>`` of an object's canonical JSON: build keys, ref identities, cache keys."""
    return sha256_bytes(canonical_json(obj))


def keyed_digest(key: bytes, data: bytes) -> str:
    """``hmac-sha256:<hex>`` of ``data`` under ``key``: how a secret enters a recorded key.

    An unsalted sha256 of a short password is a dictionary lookup for whoever reads the record;
    without the key (the store's, never recorded) this one says nothing about ``data``.
    """
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()


def hexpart(digest: str) -> str:
    """The hex of a ``sha256:<hex>`` digest (a blob's or a cache entry's file name)."""
    return digest.removeprefix("sha256:")


def hash_stream(stream: IO[bytes], algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Read ``stream`` to its end once, hashing for every algorithm asked (hex, no prefix)."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    while chunk := stream.read(CHUNK):
        for hasher in hashers.values():
            hasher.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def hash_file(path: Path, algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Hash a local file once for every algorithm asked (hex, no prefix)."""
    with path.open("rb") as stream:
        return hash_stream(stream, algorithms)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file: what its blob would be named."""
    return "sha256:" + hash_file(path)["sha256"]


def tree_digest(root: Path) -> str:
    """``sha256:<hex>`` of what a local path puts into a guest: a file's bytes, or a tree's.

    For a directory every entry counts in sorted order (names relative to ``root``, type, mode,
    link target, bytes), so the same tree anywhere on disk hashes alike and any change to a byte,
    name or mode changes the digest. A file is its bytes alone, whatever it is called.
    """
    if not root.is_dir() or root.is_symlink():
        return file_digest(root)
    outer = hashlib.sha256()
    for path in [root, *sorted(root.rglob("*"))]:
        relative = path.relative_to(root).as_posix()
        st = path.lstat()
        if path.is_symlink():
            entry = f"l {relative} {path.readlink()}"
        elif path.is_dir():
            entry = f"d {relative} {st.st_mode & 0o7777:o}"
        else:
            entry = f"f {relative} {st.st_mode & 0o7777:o} {hash_file(path)['sha256']}"
        outer.update(entry.encode("utf-8", "surrogateescape") + b"\0")
    return "sha256:" + outer.hexdigest()


def copy_hashing(source: Path, dest: Path) -> str:
    """Copy ``source`` to a new ``dest`` and return the ``sha256:<hex>`` of what was copied."""
    hasher = hashlib.sha256()
    with source.open("rb") as src, dest.open("xb") as dst:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
            dst.write(chunk)
    return "sha256:" + hasher.hexdigest()
