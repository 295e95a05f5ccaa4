"""Parse the checksum files distributions publish (BSD `SHA256 (name) = hex` and GNU `hex  name`).

Only sha256 and sha512 are trusted; everything else (PGP armor, comments, other algorithms,
unsafe names) is skipped rather than guessed at. Unsigned lines parse like any other, so pass only
the text a signature covers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from imagekit.errors import ChecksumError

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_ALGORITHM_BY_LENGTH = {length: name for name, length in _HEX_LENGTHS.items()}
_BSD_LINE = re.compile(r"(?P<tag>[A-Za-z0-9-]+) \((?P<name>.+)\) = (?P<hex>[0-9A-Fa-f]+)")
_GNU_LINE = re.compile(r"(?P<hex>[0-9A-Fa-f]{64}|[0-9A-Fa-f]{128}) [ *]?(?P<name>.+)")
_SIZE_COMMENT = re.compile(r"# (?P<name>.+): (?P<size>[0-9]+) bytes")
_LISTED_NAMES = 10


@dataclass(frozen=True)
class ChecksumEntry:
    """One file's digest as the checksum file states it."""

    filename: str
    algorithm: str
    digest: str
    size: int | None


def parse_checksum_file(text: str, source: str = "checksum file") -> list[ChecksumEntry]:
    """Return every sha256/sha512 entry in `text`; `source` names the file in error messages."""
    parsed: list[tuple[str, str, str]] = []
    sizes: dict[str, int | None] = {}
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        if size_match := _SIZE_COMMENT.fullmatch(line):
            name, size = size_match["name"], int(size_match["size"])
            # Disagreeing comments leave the size unknown; the digest still decides.
            sizes[name] = size if sizes.get(name, size) == size else None
        elif entry := _parse_line(line):
            parsed.append(entry)
    if not parsed:
        raise ChecksumError(
            f"no checksum lines found in {source}: expected 'SHA256 (name) = hex' or 'hex  name' "
            "lines with sha256 or sha512 digests; check that the URL points at the checksum file"
        )
    return [ChecksumEntry(name, alg, digest, sizes.get(name)) for name, alg, digest in parsed]


def _parse_line(line: str) -> tuple[str, str, str] | None:
    """(name, algorithm, digest) of a BSD or GNU line, or None for anything else."""
    if bsd := _BSD_LINE.fullmatch(line):
        algorithm, name, digest = bsd["tag"].lower(), bsd["name"], bsd["hex"]
        if len(digest) != _HEX_LENGTHS.get(algorithm):
            return None
    elif gnu := _GNU_LINE.fullmatch(line):
        name, digest = gnu["name"], gnu["hex"]
        algorithm = _ALGORITHM_BY_LENGTH[len(digest)]
    else:
        return None
    name = name.removeprefix("./")
    if not name or name.startswith("/") or "\0" in name or ".." in name.split("/"):
        return None
    return name, algorithm, digest.lower()


def refuse_conflicts(entries: Sequence[ChecksumEntry], source: str = "checksum file") -> None:
    """Refuse a file listed twice with different digests of one algorithm: one line is forged."""
    seen: dict[tuple[str, str], str] = {}
    for entry in entries:
        if seen.setdefault((entry.filename, entry.algorithm), entry.digest) != entry.digest:
            raise ChecksumError(
                f"{source} lists {entry.filename} with different {entry.algorithm} digests; "
                "refusing to guess which is genuine (the file may have been tampered with)"
            )


def find_entry(
    entries: Sequence[ChecksumEntry], filename: str, algorithm: str | None = None
) -> ChecksumEntry:
    """The entry for `filename`: sha256 when present (the store's own digest), else sha512."""
    if algorithm is not None and algorithm not in _HEX_LENGTHS:
        raise ChecksumError(f"unsupported checksum algorithm {algorithm!r}: use sha256 or sha512")
    named = [entry for entry in entries if entry.filename == filename]
    if not named:
        listed = list(dict.fromkeys(entry.filename for entry in entries))
        shown = ", ".join(listed[:_LISTED_NAMES])
        more = f" and {len(listed) - _LISTED_NAMES} more" if len(listed) > _LISTED_NAMES else ""
        raise ChecksumError(
            f"{filename} is not listed in the checksum file (it lists {shown}{more}); "
            "check the image file name in the recipe"
        )
    available = {entry.algorithm for entry in named}
    wanted = algorithm or ("sha256" if "sha256" in available else "sha512")
    matching = [entry for entry in named if entry.algorithm == wanted]
    if not matching:
        raise ChecksumError(
            f"the checksum file has no {wanted} digest for {filename}, only "
            + ", ".join(sorted(available))
        )
    if len({entry.digest for entry in matching}) > 1:
        raise ChecksumError(
            f"the checksum file lists {filename} with {len(matching)} different {wanted} digests; "
            "refusing to guess which is genuine (the file may have been tampered with)"
        )
    return matching[0]
