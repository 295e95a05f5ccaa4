"""Fuzz the checksum-file parser: entries it keeps are well formed; it raises only ChecksumError.

    python fuzz/fuzz_checksums.py [CORPUS_DIR ...] [libFuzzer flags, e.g. -runs=3000]

Seeds: fuzz/corpus/checksums/ (real CHECKSUM/SHA256SUMS files from tests/data/real).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["imagekit"]):
    from imagekit.errors import ImagekitError
    from imagekit.verify.checksums import parse_checksum_file

HEX = {"sha256": re.compile("[0-9a-f]{64}"), "sha512": re.compile("[0-9a-f]{128}")}


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        entries = parse_checksum_file(text)
    except ImagekitError:
        return
    for entry in entries:
        # What the parser keeps is what the verifier trusts: it must be safe and well formed.
        assert entry.algorithm in HEX, entry
        assert HEX[entry.algorithm].fullmatch(entry.digest), entry
        assert entry.filename and not entry.filename.startswith("/"), entry
        assert "\0" not in entry.filename, entry
        assert ".." not in entry.filename.split("/"), entry
        assert entry.size is None or entry.size >= 0, entry


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
