"""Verify files a user downloaded by hand: a checksum file, its signature, and the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagekit.core.digest import hash_file
from imagekit.errors import ChecksumError, RecipeError
from imagekit.verify.checksums import find_entry
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

    For users who downloaded by hand. Only the signed entries are returned or matched.
    """
    try:
        data = checksum.read_bytes()
        sig = signature.read_bytes() if signature else None
    except OSError as exc:
        raise RecipeError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    verified = verify_checksum_file(data, signature=sig, keys=keys, source=str(checksum))
    result: dict[str, Any] = {
        "signer": verified.signer,
        "entries": [
            {"filename": e.filename, "algorithm": e.algorithm, "digest": e.digest, "size": e.size}
            for e in verified.entries
        ],
    }
    if file is not None:
        entry = find_entry(verified.entries, filename or file.name)
        actual = hash_file(file, [entry.algorithm])[entry.algorithm]
        if actual != entry.digest:
            raise ChecksumError(
                f"{file}: {entry.algorithm} is {actual}, the checksum file says {entry.digest}"
            )
        if entry.size is not None and file.stat().st_size != entry.size:
            raise ChecksumError(f"{file}: size {file.stat().st_size}, expected {entry.size}")
        result["match"] = {
            "filename": entry.filename,
            "algorithm": entry.algorithm,
            "digest": entry.digest,
        }
    return result
