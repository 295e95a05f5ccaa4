"""Hostile or broken checksum files and signatures through a full pull: refused, nothing stored.

A refusal of the evidence must come before the image is requested at all.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

import imagekit
from imagekit.errors import ChecksumError, ImagekitError, SignatureError
from imagekit.store import Store
from tests.conftest import Upstream, make_qcow2
from tests.gpgtools import TestKey, clearsign, make_key, revoke
from tests.reliability import figures
from tests.reliability.storecheck import assert_consistent

FILENAME = "Evidence-Cloud-1.qcow2"
IMAGE = f"/pub/{FILENAME}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestKey, TestKey]:
    """The pinned key and another, sharing a GNUPGHOME so one file can carry both signatures."""
    directory = tmp_path_factory.mktemp("ev")
    return make_key(directory, "pinned"), make_key(directory, "intruder")


def line(data: bytes, filename: str = FILENAME) -> str:
    return f"SHA256 ({filename}) = {hashlib.sha256(data).hexdigest()}\n"


def serve(upstream: Upstream, image: bytes, checksum: bytes) -> None:
    upstream.server.add(IMAGE, image)
    upstream.server.add("/pub/CHECKSUM", checksum)


def recipe_for(
    upstream: Upstream, pinned: TestKey, *extra_keys: TestKey, fingerprint: bool = False
) -> imagekit.Recipe:
    files = []
    for key in (pinned, *extra_keys):
        path = upstream.directory / f"{key.fingerprint}.asc"
        path.write_bytes(key.public_key.read_bytes())
        files.append(path.name)
    root = upstream.server.url("/pub/")
    text = (
        f'name = "evidence"\nversion = "1"\n[source]\nurl = "{root}{FILENAME}"\n'
        f'checksum_url = "{root}CHECKSUM"\nkeys = {files!r}\n'.replace("'", '"')
    )
    if fingerprint:
        text += f'fingerprints = ["{pinned.fingerprint}"]\n'
    return imagekit.load_recipe_string(text, base_dir=upstream.directory)


def refused(
    store: Store,
    upstream: Upstream,
    recipe: imagekit.Recipe,
    error: type[ImagekitError],
    match: str,
    *,
    requested: bool = False,
) -> None:
    with pytest.raises(error, match=match):
        store.pull(recipe)
    assert list(store.blobs_dir.iterdir()) == []
    assert store.refs() == []
    gets = [e for e in upstream.server.log(IMAGE) if e.method == "GET"]
    assert bool(gets) == requested
    assert_consistent(store)
    figures.add("hostile checksum files / signatures refused by a full pull")


def test_forged_line_for_the_same_file_outside_the_block_is_ignored(
    store: Store,
    upstream: Upstream,
    keys: tuple[TestKey, TestKey],
    image_bytes: bytes,
    tmp_path: Path,
) -> None:
    pinned, _ = keys
    evil = make_qcow2(tmp_path / "evil.qcow2", seed=13)
    signed = clearsign(pinned, line(image_bytes).encode())
    forged = line(evil).encode()
    serve(upstream, evil, forged + signed + forged)  # the server hands out the evil bytes

    # The forged entries do not count: the signed digest refuses the bytes after download.
    refused(
        store, upstream, recipe_for(upstream, pinned), ChecksumError, "tampered", requested=True
    )


def test_dash_escaped_lines_verify_and_an_unescaped_forgery_does_not(
    store: Store, upstream: Upstream, keys: tuple[TestKey, TestKey], image_bytes: bytes
) -> None:
    pinned, _ = keys
    text = f"-----BEGIN LIST-----\n- a dashed note\n{line(image_bytes)}-----END LIST-----\n"
    signed = clearsign(pinned, text.encode())
    assert b"\n- -----BEGIN LIST-----" in signed  # gpg escaped the dashed lines
    serve(upstream, image_bytes, signed)
    assert store.pull(recipe_for(upstream, pinned)).path.read_bytes() == image_bytes

    unescaped = signed.replace(b"\n- -----BEGIN LIST-----", b"\n-----BEGIN LIST-----")
    serve(upstream, image_bytes, unescaped)
    other = Store(store.root.parent / "other")
    upstream.server.clear_log()
    with pytest.raises(SignatureError):
        other.pull(recipe_for(upstream, pinned), refresh=True)
    assert list(other.blobs_dir.iterdir()) == []
    figures.add("hostile checksum files / signatures refused by a full pull")


def test_a_second_signature_by_an_unpinned_key_is_refused(
    store: Store, upstream: Upstream, keys: tuple[TestKey, TestKey], image_bytes: bytes
) -> None:
    pinned, intruder = keys
    serve(upstream, image_bytes, clearsign(pinned, line(image_bytes).encode(), also=[intruder]))
    refused(store, upstream, recipe_for(upstream, pinned), SignatureError, intruder.fingerprint)


def test_signer_in_the_keyring_but_not_pinned_is_refused(
    store: Store, upstream: Upstream, keys: tuple[TestKey, TestKey], image_bytes: bytes
) -> None:
    pinned, intruder = keys
    serve(upstream, image_bytes, clearsign(intruder, line(image_bytes).encode()))
    recipe = recipe_for(upstream, pinned, intruder, fingerprint=True)
    refused(store, upstream, recipe, SignatureError, intruder.fingerprint)


def test_expired_key_is_refused(
    store: Store, upstream: Upstream, tmp_path: Path, image_bytes: bytes
) -> None:
    three_days_ago = int(time.time()) - 3 * 86400
    key = make_key(tmp_path, "expired", expire="1d", created=three_days_ago)
    serve(upstream, image_bytes, clearsign(key, line(image_bytes).encode(), at=three_days_ago + 60))
    refused(store, upstream, recipe_for(upstream, key), SignatureError, "expired")


def test_revoked_key_is_refused(
    store: Store, upstream: Upstream, tmp_path: Path, image_bytes: bytes
) -> None:
    key = make_key(tmp_path, "revoked")
    serve(upstream, image_bytes, clearsign(key, line(image_bytes).encode()))
    revoked = revoke(key)
    refused(store, upstream, recipe_for(upstream, revoked), SignatureError, "revoked")


def test_image_listed_twice_with_different_digests_is_refused(
    store: Store, upstream: Upstream, keys: tuple[TestKey, TestKey], image_bytes: bytes
) -> None:
    pinned, _ = keys
    text = line(image_bytes) + line(b"something else")
    serve(upstream, image_bytes, clearsign(pinned, text.encode()))
    refused(
        store, upstream, recipe_for(upstream, pinned), ChecksumError, "different sha256 digests"
    )


def test_signed_size_that_disagrees_with_the_bytes_is_refused(
    store: Store, upstream: Upstream, keys: tuple[TestKey, TestKey], image_bytes: bytes
) -> None:
    pinned, _ = keys
    text = f"# {FILENAME}: {len(image_bytes) + 1} bytes\n" + line(image_bytes)
    serve(upstream, image_bytes, clearsign(pinned, text.encode()))
    refused(
        store,
        upstream,
        recipe_for(upstream, pinned),
        ImagekitError,
        f"{len(image_bytes) + 1}",
        requested=True,
    )
    assert list(store.tmp_dir.glob("*.part")) == []
