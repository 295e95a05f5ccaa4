"""Verify files a user downloaded by hand: a checksum file, its signature, and the file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagekit.core.capped import EVIDENCE_MAX, open_regular, read_capped
from imagekit.core.digest import hash_stream
from imagekit.errors import ChecksumError, RecipeError, SignatureError
from imagekit.verify.checksums import ChecksumEntry, find_entry, refuse_conflicts
from imagekit.verify.policy import verify_checksum_file


def verify_local(
    checksum: Path,
    *,
    signature: Path | None = None,
    keys: Sequence[Path] = (),
    file: Path | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    """Verify a checksum file (and its signature) and, given ``file``, the file against it.

    For users who downloaded by hand. Only the signed entries are returned or matched. Without
    a key nothing would be proven, so that is refused: a checksum file that anyone could have
    written says nothing about where a file came from. Every path must name a regular file
    (RecipeError otherwise); a file listed with two different digests is refused.
    """
    if not keys:
        raise SignatureError(
            "no key given, so nothing was verified: pass the publisher's OpenPGP public key "
            "with --key KEY (a checksum file alone proves nothing about who wrote it)"
        )
    for key in keys:
        read_capped(key, EVIDENCE_MAX, "key file")
    data = read_capped(checksum, EVIDENCE_MAX, "checksum file")
    sig = read_capped(signature, EVIDENCE_MAX, "signature") if signature else None
    verified = verify_checksum_file(data, signature=sig, keys=keys, source=str(checksum))
    refuse_conflicts(verified.entries, str(checksum))
    result: dict[str, Any] = {
        "signer": verified.signer,
        "entries": [
            {"filename": e.filename, "algorithm": e.algorithm, "digest": e.digest, "size": e.size}
            for e in verified.entries
        ],
    }
    if file is not None:
        entry = find_entry(verified.entries, filename or file.name)
        _check_file(file, entry)
        result["match"] = {
            "filename": entry.filename,
            "algorithm": entry.algorithm,
            "digest": entry.digest,
        }
    return result


def _check_file(file: Path, entry: ChecksumEntry) -> None:
    """Hash ``file`` (a regular file, read once) against its signed entry, or raise."""
    with open_regular(file, "file") as stream:
        size = os.fstat(stream.fileno()).st_size
        try:
            actual = hash_stream(stream, [entry.algorithm])[entry.algorithm]
        except OSError as exc:
            raise RecipeError(f"cannot read file {file}: {exc.strerror or exc}") from exc
    if actual != entry.digest:
        raise ChecksumError(
            f"{file}: {entry.algorithm} is {actual}, the checksum file says {entry.digest}"
        )
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{file}: size {size}, expected {entry.size}")
