"""Fuzz the store's readers of index.json and manifest blobs: only ImagekitError may escape.

    python fuzz/fuzz_store_index.py [CORPUS_DIR ...] [libFuzzer flags, e.g. -runs=3000]

The first byte of the input picks what the rest replaces in a small valid store (one image,
``img:1``): even = ``index.json``, odd = the manifest blob that ``img:1`` points at. Then every
read path runs: refs, resolve by ref/name/digest, manifest, Image.load, fsck and a dry-run gc.
Seeds: fuzz/corpus/store_index/ (the valid index.json and manifest, with their selector byte).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["imagekit"]):
    from imagekit.errors import ImagekitError
    from imagekit.image import Image
    from imagekit.oci.media import MEDIA_DISK_RAW, MEDIA_MANIFEST
    from imagekit.store import Store

# In $TMPDIR; left behind, as libFuzzer exits without running atexit.
_TEMP = tempfile.TemporaryDirectory(prefix="imagekit-fuzz-store-")
STORE = Store(Path(_TEMP.name) / "store")
_layer = STORE.add_bytes(b"disk", MEDIA_DISK_RAW)
MANIFEST = STORE.write_manifest({"name": "img"}, [_layer])
STORE.tag("img:1", MANIFEST)
GOOD_INDEX = (STORE.root / "index.json").read_bytes()
GOOD_BLOBS = {p.name for p in STORE.blobs_dir.iterdir()}


def seeds() -> dict[str, bytes]:
    """The valid inputs, as corpus files (``python fuzz/fuzz_store_index.py --write-seeds DIR``)."""
    return {
        "index.json": b"\x00" + GOOD_INDEX,
        "manifest.json": b"\x01" + STORE.read_blob(MANIFEST.digest),
    }


def exercise(digest: str) -> None:
    for action in (
        STORE.refs,
        lambda: STORE.resolve("img:1"),
        lambda: STORE.resolve("img"),
        lambda: STORE.resolve(digest),
        lambda: STORE.resolve(digest.removeprefix("sha256:")[:12]),
        lambda: STORE.manifest(digest),
        lambda: Image.load(STORE, "img:1").disk_digest,
        STORE.images,
        STORE.fsck,
        lambda: STORE.gc(dry_run=True),
    ):
        with contextlib.suppress(ImagekitError):
            action()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    payload = data[1:]
    fuzzed = None
    try:
        if data[0] % 2 == 0:
            (STORE.root / "index.json").write_bytes(payload)
            digest = MANIFEST.digest
        else:
            fuzzed = STORE.add_bytes(payload, MEDIA_MANIFEST)
            index = json.loads(GOOD_INDEX)
            index["manifests"][0].update(digest=fuzzed.digest, size=fuzzed.size)
            (STORE.root / "index.json").write_text(json.dumps(index))
            digest = fuzzed.digest
        exercise(digest)
    finally:
        (STORE.root / "index.json").write_bytes(GOOD_INDEX)
        if fuzzed is not None and fuzzed.digest.removeprefix("sha256:") not in GOOD_BLOBS:
            STORE.blob_path(fuzzed.digest).unlink(missing_ok=True)


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        for name, data in seeds().items():
            (Path(sys.argv[2]) / name).write_bytes(data)
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
