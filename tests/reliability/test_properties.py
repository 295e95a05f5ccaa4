"""Property-based tests: parsers of untrusted input raise only the typed error of their kind.

Recipes, checksum files, index.json, manifest blobs and qcow2 headers all come from outside (a
user's file, a mirror, a damaged disk). Whatever hypothesis feeds them, the only exception each
may raise is the one its callers handle: RecipeError from the recipe loader, ChecksumError from
the checksum parser, StoreError from the store's read paths, UnsafeImageError from the disk
header reader. A KeyError or TypeError would be a crash with a traceback; another ImagekitError
would be the wrong exit code and message.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagekit.disk import header as diskformat
from imagekit.errors import ChecksumError, RecipeError, StoreError, UnsafeImageError
from imagekit.image import Image
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import MEDIA_DISK_RAW, MEDIA_MANIFEST
from imagekit.recipe import load_recipe_string
from imagekit.store import Store
from imagekit.verify.checksums import parse_checksum_file
from tests.reliability import figures

EXAMPLES = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
HEX = "0123456789abcdef"

# --- recipes ----------------------------------------------------------------------------------

KEYS = [
    "name",
    "version",
    "arch",
    "description",
    "kind",
    "url",
    "checksum_url",
    "signature_url",
    "keys",
    "fingerprints",
    "sha256",
    "sha512",
    "insecure",
    "format",
    "filename",
    "level",
    "mirror_root",
    "recipe",
    "path",
    "kickstart",
    "disk",
    "size",
    "content",
    "hostname",
    "resolver",
    "image",
    "releases_url",
    "metadata_url",
    "compose",
    "x",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            '"fedora"',
            '"41"',
            '"latest"',
            '"x86_64"',
            '"http"',
            '"scratch"',
            '"kickstart"',
            '"recipe"',
            '"https://h.invalid/{version}/a.qcow2"',
            '"file:///etc/passwd"',
            '"../../etc/shadow"',
            '"qcow2"',
            '"raw"',
            "true",
            '["k.asc"]',
            "[]",
            "{}",
            "1",
            "-1",
            "1e999",
            '"' + "a" * 64 + '"',
            '{ size = "1G", format = "qcow2" }',
            '"{nope}"',
            '"\\u0000"',
        ]
    ),
    st.text(max_size=20).map(json.dumps),
    st.integers().map(str),
)
TABLES = st.sampled_from(
    [
        "",
        "[source]",
        "[resolve]",
        "[[customize]]",
        "[source.fingerprints]",
        "[source.disk]",
        "[weird]",
    ]
)
LINES = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    TABLES,
    st.text(max_size=30),
)


@EXAMPLES
@given(st.lists(LINES, max_size=14))
def test_recipe_loader_raises_only_recipe_errors(lines: list[str]) -> None:
    figures.add("hypothesis examples: recipe loader")
    text = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as base, contextlib.suppress(RecipeError):
        load_recipe_string(text, base_dir=Path(base))


@EXAMPLES
@given(st.text(max_size=400))
def test_recipe_loader_on_arbitrary_text(text: str) -> None:
    figures.add("hypothesis examples: recipe loader")
    with contextlib.suppress(RecipeError):
        load_recipe_string(text, base_dir=Path("/nonexistent"))


# --- checksum files ---------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(
        [
            "disk.qcow2",
            "./disk.qcow2",
            "../disk.qcow2",
            "/etc/shadow",
            "a/../b",
            "x\0y",
            " ",
            "(x)",
            "a b",
            "*disk",
        ]
    ),
    st.text(max_size=20),
)
DIGESTS = st.one_of(
    st.text(HEX + "ABCDEF", min_size=64, max_size=64),
    st.text(HEX, min_size=128, max_size=128),
    st.text(HEX, max_size=130),
)
CHECKSUM_LINES = st.one_of(
    st.tuples(st.sampled_from(["SHA256", "SHA512", "sha256", "MD5", "SHA1"]), NAMES, DIGESTS).map(
        lambda t: f"{t[0]} ({t[1]}) = {t[2]}"
    ),
    st.tuples(DIGESTS, st.sampled_from([" ", "  ", " *"]), NAMES).map("".join),
    st.tuples(NAMES, st.integers(min_value=-5)).map(lambda t: f"# {t[0]}: {t[1]} bytes"),
    st.text(max_size=60),
)


@EXAMPLES
@given(st.lists(CHECKSUM_LINES, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_checksum_parser_keeps_only_safe_well_formed_entries(lines: list[str], eol: str) -> None:
    figures.add("hypothesis examples: checksum parser")
    try:
        entries = parse_checksum_file(eol.join(lines))
    except ChecksumError:
        return
    for entry in entries:
        assert entry.algorithm in ("sha256", "sha512")
        assert re.fullmatch(
            f"[0-9a-f]{{{64 if entry.algorithm == 'sha256' else 128}}}", entry.digest
        )
        assert entry.filename and not entry.filename.startswith("/")
        assert "\0" not in entry.filename and ".." not in entry.filename.split("/")
        assert entry.size is None or entry.size >= 0


# --- index.json and manifests -----------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "schemaVersion",
    "mediaType",
    "manifests",
    "layers",
    "config",
    "annotations",
    "digest",
    "size",
    "subject",
    "org.opencontainers.image.ref.name",
    "org.imagekit.parent",
]


def mutate(obj: Any, draw: st.DrawFn) -> Any:
    """Replace, drop or add one field somewhere in a JSON document."""
    if isinstance(obj, dict) and obj and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj)))
        action = draw(st.sampled_from(["replace", "drop", "recurse"]))
        if action == "replace":
            return {**obj, key: draw(JSON)}
        if action == "drop":
            return {k: v for k, v in obj.items() if k != key}
        return {**obj, key: mutate(obj[key], draw)}
    if isinstance(obj, list) and obj and draw(st.booleans()):
        i = draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], mutate(obj[i], draw), *obj[i + 1 :]]
    if isinstance(obj, dict):
        return {**obj, draw(st.sampled_from(FIELDS)): draw(JSON)}
    return draw(JSON)


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    obj = valid
    for _ in range(draw(st.integers(1, 3))):
        obj = mutate(obj, draw)
    return obj


def exercise(store: Store) -> None:
    """Every read path over the index and manifests; each may only raise StoreError."""
    for action in (
        store.refs,
        store.images,
        lambda: store.resolve("img:1"),
        lambda: store.resolve("img"),
        lambda: Image.load(store, "img:1").disk_digest,
        lambda: store.fsck(),
        lambda: store.gc(dry_run=True),
    ):
        with contextlib.suppress(StoreError):
            action()


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Descriptor, bytes]:
    store = Store(tmp_path_factory.mktemp("fuzz") / "store")
    layer = store.add_bytes(b"disk", MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": "img"}, [layer])
    store.tag("img:1", manifest)
    return store, manifest, (store.root / "index.json").read_bytes()


@EXAMPLES
@given(data=st.data())
def test_fuzzed_index_json_raises_only_store_errors(
    fuzz_store: tuple[Store, Descriptor, bytes], data: st.DataObject
) -> None:
    figures.add("hypothesis examples: index.json")
    store, _, good = fuzz_store
    index = data.draw(st.one_of(mutated(json.loads(good)), JSON))
    (store.root / "index.json").write_text(json.dumps(index))
    try:
        exercise(store)
    finally:
        (store.root / "index.json").write_bytes(good)


@EXAMPLES
@given(data=st.data())
def test_fuzzed_manifest_blob_raises_only_store_errors(
    fuzz_store: tuple[Store, Descriptor, bytes], data: st.DataObject
) -> None:
    figures.add("hypothesis examples: manifest blobs")
    store, manifest, good = fuzz_store
    obj = data.draw(mutated(store.read_json(manifest.digest)))
    fuzzed = store.add_bytes(json.dumps(obj).encode(), MEDIA_MANIFEST)
    store.tag("img:1", fuzzed)
    try:
        exercise(store)
    finally:
        (store.root / "index.json").write_bytes(good)
        if fuzzed.digest != manifest.digest:
            store.blob_path(fuzzed.digest).unlink()


# --- qcow2 headers ----------------------------------------------------------------------------

QCOW2_FIELDS = [  # (offset, struct format) of every header field imagekit reads
    (4, ">I"),
    (8, ">Q"),
    (16, ">I"),
    (20, ">I"),
    (24, ">Q"),
    (32, ">I"),
    (36, ">I"),
    (40, ">Q"),
    (48, ">Q"),
    (56, ">I"),
    (60, ">I"),
    (64, ">Q"),
    (72, ">Q"),
    (80, ">Q"),
    (88, ">Q"),
    (96, ">I"),
    (100, ">I"),
]
INTERESTING = st.one_of(
    st.sampled_from(
        [0, 1, 2, 3, 8, 9, 16, 21, 22, 72, 104, 112, 0x8000, 0x10000, 2**31, 2**32 - 1]
    ),
    st.integers(0, 2**64 - 1),
)


@pytest.fixture(scope="module")
def qcow2_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("hdr") / "base.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-u",
            "-b",
            "base.raw",
            str(path),
            "64M",
        ],
        check=True,
    )
    return path.read_bytes()


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    fields=st.lists(st.tuples(st.sampled_from(QCOW2_FIELDS), INTERESTING), max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 4096)),
    promised=st.sampled_from(["qcow2", "raw"]),
)
def test_mutated_qcow2_headers_raise_only_unsafe_image_errors(
    qcow2_image: bytes,
    tmp_path_factory: pytest.TempPathFactory,
    fields: list[tuple[tuple[int, str], int]],
    flips: list[tuple[int, int]],
    cut: int | None,
    promised: str,
) -> None:
    figures.add("hypothesis examples: qcow2 headers")
    data = bytearray(qcow2_image)
    for (offset, fmt), value in fields:
        size = struct.calcsize(fmt)
        data[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "big")
    for offset, value in flips:
        data[offset] = value
    if cut is not None:
        del data[cut:]
    with tempfile.NamedTemporaryFile(dir=_scratch(tmp_path_factory), suffix=".img") as f:
        f.write(data)
        f.flush()
        path = Path(f.name)
        with contextlib.suppress(UnsafeImageError):
            diskformat.probe(path)
        try:
            header = diskformat.ensure_safe(path, promised, allowed_backing_dir=path.parent)
        except UnsafeImageError:
            return
        # Anything accepted reads nothing but itself (or a plain name beside it).
        assert header.format == promised
        assert header.data_file is None
        if header.backing_file is not None:
            assert diskformat.is_plain_name(header.backing_file)


_SCRATCH: list[Path] = []


def _scratch(factory: pytest.TempPathFactory) -> Path:
    if not _SCRATCH:
        _SCRATCH.append(factory.mktemp("mutated"))
    return _SCRATCH[0]
