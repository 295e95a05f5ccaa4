"""Fuzz the disk header reader: probe/ensure_safe raise only UnsafeImageError (an ImagekitError).

    python fuzz/fuzz_qcow2.py [CORPUS_DIR ...] [libFuzzer flags, e.g. -runs=3000]

The input is written to a file and inspected as a promised qcow2 and as a promised raw disk.
Whatever is accepted must read nothing but itself (or a plain file name beside it).
Seeds: fuzz/corpus/qcow2/ (tiny images from ``qemu-img create``).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["imagekit"]):
    from imagekit.disk import header as diskformat
    from imagekit.errors import ImagekitError

# In $TMPDIR; left behind, as libFuzzer exits without running atexit.
_TEMP = tempfile.TemporaryDirectory(prefix="imagekit-fuzz-qcow2-")
SCRATCH = Path(_TEMP.name)
IMAGE = SCRATCH / "fuzzed.img"


def TestOneInput(data: bytes) -> None:
    IMAGE.write_bytes(data)
    with contextlib.suppress(ImagekitError):
        diskformat.probe(IMAGE)
    for promised in ("qcow2", "raw"):
        try:
            header = diskformat.ensure_safe(IMAGE, promised, allowed_backing_dir=SCRATCH)
        except ImagekitError:
            continue
        assert header.format == promised, header
        assert header.data_file is None, header
        if header.backing_file is not None:
            assert diskformat.is_plain_name(header.backing_file), header


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
