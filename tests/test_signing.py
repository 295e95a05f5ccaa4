"""Signatures in cosign's key-based format: keys, signing, the trust policy, the local store, CLI.

Keys made by openssl load and sign; openssl checks what imagekit signs; the payload and the
signature manifest are compared byte for byte with cosign's format written out by hand here.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit import config
from imagekit.core.digest import sha256_bytes
from imagekit.errors import RecipeError, SignatureError, StoreError
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import (
    MEDIA_DISK_RAW,
    MEDIA_MANIFEST,
    MEDIA_SIMPLE_SIGNING,
    signature_tag,
    signed_digest,
)
from imagekit.oci.registry import Registry
from imagekit.store import Store, open_store
from imagekit.verify import cosign, keys
from imagekit.verify.trust import TrustPolicy
from tests.conftest import REPO, Upstream, make_qcow2
from tests.registry import RunningRegistry, running_registry

DIGEST = "sha256:" + "ab" * 32
ENV_WITHOUT_IMAGEKIT = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEKIT_")}


@dataclass(frozen=True)
class Pair:
    private: Path
    public: Path
    fingerprint: str


@pytest.fixture(autouse=True)
def no_ambient_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.KEY_PASSPHRASE_ENV, raising=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    files = keys.generate(tmp_path_factory.mktemp("k") / "build", "")
    return Pair(files.private, files.public, files.fingerprint)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    files = keys.generate(tmp_path_factory.mktemp("k") / "other", "")
    return Pair(files.private, files.public, files.fingerprint)


def openssl(*args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *args], input=data, capture_output=True, check=True)
    return done.stdout


def spki_fingerprint(public_pem: Path) -> str:
    return sha256_bytes(openssl("pkey", "-pubin", "-in", str(public_pem), "-outform", "DER"))


def add_image(store: Store, ref: str, disk: bytes = b"disk") -> Descriptor:
    layer = store.add_bytes(disk, MEDIA_DISK_RAW)
    manifest = store.write_manifest({"name": ref}, [layer])
    store.tag(ref, manifest)
    return manifest


def signature_entry(store: Store, digest: str) -> tuple[str, Descriptor]:
    [found] = [(r, d) for r, d in store.refs() if r.endswith(":" + signature_tag(digest))]
    return found


def stored_layers(store: Store, digest: str) -> list[tuple[cosign.SignatureLayer, bytes]]:
    manifest = store.read_blob(signature_entry(store, digest)[1].digest)
    layers = cosign.parse_signature_manifest(manifest)
    return [(layer, store.read_blob(layer.payload.digest)) for layer in layers]


# --- keys -------------------------------------------------------------------------------------


def test_generate_with_a_passphrase_writes_an_encrypted_pkcs8_key_openssl_reads(
    tmp_path: Path,
) -> None:
    files = keys.generate(tmp_path / "build", "correct horse")

    assert (files.private, files.public) == (tmp_path / "build.key", tmp_path / "build.pub")
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert files.private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert files.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert spki_fingerprint(files.public) == files.fingerprint
    pub = openssl("pkey", "-in", str(files.private), "-passin", "pass:correct horse", "-pubout")
    assert pub == files.public.read_bytes()
    with pytest.raises(RecipeError, match="the passphrase is wrong"):
        keys.load_private_key(files.private, "wrong")
    with pytest.raises(RecipeError, match="encrypted and the passphrase is empty"):
        keys.load_private_key(files.private, "")
    loaded = keys.load_private_key(files.private, "correct horse")
    assert keys.fingerprint(loaded.public_key()) == files.fingerprint


def test_generate_with_an_empty_passphrase_leaves_the_key_unencrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.KEY_PASSPHRASE_ENV, "")
    files = keys.generate(tmp_path / "plain")

    assert files.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert openssl("pkey", "-in", str(files.private), "-pubout") == files.public.read_bytes()
    with pytest.raises(RecipeError, match=r"plain\.key exists; remove it"):
        keys.generate(tmp_path / "plain", "")


def test_without_a_terminal_or_the_variable_nothing_is_asked_and_nothing_written(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imagekit", "key", "generate", "--output", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        env=ENV_WITHOUT_IMAGEKIT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr == (
        f"imagekit: error: no passphrase for {tmp_path / 'k.key'}: set "
        "IMAGEKIT_KEY_PASSPHRASE (empty for an unencrypted key) or run on a terminal\n"
    )
    assert list(tmp_path.iterdir()) == []


def _expect(fd: int, text: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + 30
    while text not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {text!r} on the terminal; saw {bytes(seen)!r}"
        seen += os.read(fd, 1024)


def test_on_a_terminal_the_passphrase_is_asked_twice(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "imagekit", "key", "generate", "-o", str(tmp_path / "tty")]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(REPO)
        os.execve(sys.executable, argv, ENV_WITHOUT_IMAGEKIT)
    seen = bytearray()
    _expect(fd, b"Passphrase for", seen)
    os.write(fd, b"typed secret\n")
    _expect(fd, b"Again: ", seen)
    os.write(fd, b"typed secret\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)

    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    assert b"typed secret" not in seen  # not echoed
    key = keys.load_private_key(tmp_path / "tty.key", "typed secret")
    assert keys.fingerprint(key.public_key()) == spki_fingerprint(tmp_path / "tty.pub")


@pytest.mark.parametrize(
    ("make", "passphrase", "header"),
    [
        (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None, "PRIVATE"),
        (
            ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256"],
            "pw",
            "ENCRYPTED PRIVATE",
        ),
        (["ecparam", "-name", "prime256v1", "-genkey", "-noout"], None, "EC PRIVATE"),
        (["ecparam", "-name", "prime256v1", "-genkey", "-noout"], "pw", "EC PRIVATE"),
    ],
    ids=["pkcs8", "pkcs8-encrypted", "sec1", "sec1-encrypted"],
)
def test_openssl_keys_load_and_sign_what_openssl_verifies(
    tmp_path: Path, make: list[str], passphrase: str | None, header: str
) -> None:
    key = tmp_path / "openssl.pem"
    if make[0] == "genpkey":
        openssl(*make, "-out", str(key), *(["-pass", f"pass:{passphrase}"] if passphrase else []))
    else:
        sec1 = openssl(*make)
        if passphrase:
            sec1 = openssl("ec", "-aes256", "-passout", f"pass:{passphrase}", data=sec1)
        key.write_bytes(sec1)
    assert key.read_text().startswith(f"-----BEGIN {header} KEY-----")
    public = tmp_path / "openssl.pub"
    openssl(
        "pkey", "-in", str(key), "-passin", f"pass:{passphrase}", "-pubout", "-out", str(public)
    )
    store = Store(tmp_path / "store", trust=TrustPolicy((public,)))
    manifest = add_image(store, "web:1")

    signed = store.sign("web:1", key, passphrase=passphrase)

    assert signed.signer == spki_fingerprint(public)
    [(layer, payload)] = stored_layers(store, manifest.digest)
    (tmp_path / "payload").write_bytes(payload)
    (tmp_path / "sig.der").write_bytes(base64.b64decode(layer.signature))
    verified = openssl(
        "dgst", "-sha256", "-verify", str(public), "-signature", str(tmp_path / "sig.der"),
        str(tmp_path / "payload"),
    )  # fmt: skip
    assert verified == b"Verified OK\n"
    assert [s.signer for s in store.signatures("web:1")] == [signed.signer]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], "curve secp384r1"),
        (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "an RSA key"),
        (["genpkey", "-algorithm", "ED25519"], "an Ed25519 key"),
    ],
    ids=["p384", "rsa", "ed25519"],
)
def test_keys_other_than_p256_are_refused_clearly(
    tmp_path: Path, make: list[str], kind: str
) -> None:
    private = tmp_path / "key.pem"
    openssl(*make, "-out", str(private))
    public = tmp_path / "key.pub"
    openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    store = Store(tmp_path / "store", trust=TrustPolicy((public,)))
    add_image(store, "web:1")

    with pytest.raises(RecipeError, match=f"{kind}.*ECDSA P-256 keys only") as refused:
        store.sign("web:1", private)
    assert "imagekit key generate" in str(refused.value)
    with pytest.raises(RecipeError, match=f"{kind}.*ECDSA P-256 keys only"):
        keys.load_public_key(public)
    assert [r for r, _ in store.refs()] == ["web:1"]


def test_key_files_that_are_not_keys_are_refused(tmp_path: Path, pair: Pair) -> None:
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(RecipeError, match=r"cannot read .*junk as a PEM private key"):
        keys.load_private_key(tmp_path / "junk")
    with pytest.raises(RecipeError, match="holds a private key; name its public key"):
        keys.load_public_key(pair.private)
    (tmp_path / "cosign.key").write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    with pytest.raises(RecipeError, match="cosign's own encrypted format"):
        keys.load_private_key(tmp_path / "cosign.key")
    with pytest.raises(RecipeError, match="it does not exist"):
        keys.load_public_key(tmp_path / "missing.pub")


# --- cosign's format, byte for byte -----------------------------------------------------------


def test_the_payload_is_cosigns_simple_signing_as_go_writes_it() -> None:
    expected = (
        b'{"critical":{"identity":{"docker-reference":"registry.lan/prod/web"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert cosign.make_payload("registry.lan/prod/web", DIGEST) == expected

    annotated = cosign.make_payload("web", DIGEST, {"z": "last", "a": "<b&c>"})
    assert annotated.endswith(b'"optional":{"a":"\\u003cb\\u0026c\\u003e","z":"last"}}')
    claim = cosign.parse_payload(annotated)
    assert (claim.reference, claim.digest) == ("web", DIGEST)
    assert claim.optional == {"a": "<b&c>", "z": "last"}


def test_the_signature_manifest_is_cosigns_as_go_writes_it() -> None:
    payload = cosign.make_payload("web", DIGEST)
    described = Descriptor(MEDIA_SIMPLE_SIGNING, sha256_bytes(payload), len(payload))
    layer = cosign.SignatureLayer(described, "MEUCIQ==", None)

    config, manifest = cosign.signature_manifest([layer])

    assert config == (
        b'{"architecture":"","created":"0001-01-01T00:00:00Z",'
        b'"history":[{"created":"0001-01-01T00:00:00Z"}],"os":"",'
        b'"rootfs":{"type":"layers","diff_ids":["' + described.digest.encode() + b'"]},'
        b'"config":{}}'
    )
    assert manifest == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":'
        + str(len(config)).encode()
        + b',"digest":"'
        + sha256_bytes(config).encode()
        + b'"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json",'
        b'"size":' + str(len(payload)).encode() + b',"digest":"' + described.digest.encode()
        + b'","annotations":{"dev.cosignproject.cosign/signature":"MEUCIQ=="}}]}'
    )  # fmt: skip
    assert cosign.parse_signature_manifest(manifest) == [layer]


def test_signature_tags_are_cosigns_sha256_hex_sig() -> None:
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert signed_digest(signature_tag(DIGEST)) == DIGEST
    assert signed_digest("sha256-" + "ab" * 6) is None  # a pull by digest's local tag


def test_a_hostile_signature_manifest_is_refused() -> None:
    with pytest.raises(SignatureError, match="signature manifest is malformed"):
        cosign.parse_signature_manifest(b'{"schemaVersion": 2, "layers": 5}')
    huge = {
        "schemaVersion": 2,
        "layers": [
            {
                "mediaType": MEDIA_SIMPLE_SIGNING,
                "digest": DIGEST,
                "size": 1 << 40,
                "annotations": {"dev.cosignproject.cosign/signature": "AA=="},
            }
        ],
    }
    with pytest.raises(SignatureError, match="it is not a cosign payload"):
        cosign.parse_signature_manifest(json.dumps(huge).encode())


# --- the trust policy -------------------------------------------------------------------------


def test_requires_signature_matches_pull_targets_by_glob(pair: Pair) -> None:
    policy = TrustPolicy((pair.public,), ("oci://registry.lan/prod/*",))
    assert policy.requires_signature("oci://registry.lan/prod/web:1")
    assert policy.requires_signature("oci://registry.lan/prod/team/web@" + DIGEST)
    assert not policy.requires_signature("oci://registry.lan/dev/web:1")
    assert TrustPolicy((pair.public,), ("*",)).requires_signature("oci://any.where/x:1")
    assert not TrustPolicy().requires_signature("oci://any.where/x:1")


def _signed(key: Pair, reference: str, digest: str = DIGEST) -> tuple[bytes, str]:
    payload = cosign.make_payload(reference, digest)
    return payload, cosign.sign_payload(keys.load_private_key(key.private), payload)


@pytest.mark.parametrize(
    ("signed_as", "target"),
    [
        ("registry.lan/prod/web", "oci://registry.lan/prod/web:1"),
        ("registry.lan/prod/web", "oci://registry.lan/prod/web@" + DIGEST),
        ("registry.lan/prod/web:1", "oci://registry.lan/prod/web:1"),
        ("web", "oci://registry.lan/prod/web:1"),  # signed in a local store before the push
        ("registry.lan:5000/web", "oci://registry.lan:5000/web:2"),
    ],
)
def test_a_reference_naming_the_image_pulled_is_accepted(
    pair: Pair, signed_as: str, target: str
) -> None:
    payload, signature = _signed(pair, signed_as)
    assert TrustPolicy((pair.public,)).check(payload, signature, DIGEST, target) == pair.fingerprint


@pytest.mark.parametrize(
    ("signed_as", "why"),
    [
        ("registry.lan/dev/web", "names 'registry.lan/dev/web', another image than"),
        ("db", "names 'db', another image than registry.lan/prod/web"),
        ("registry.lan/prod/web:2", "names tag '2', not the tag pulled ('1')"),
    ],
)
def test_a_payload_for_another_reference_is_refused(pair: Pair, signed_as: str, why: str) -> None:
    payload, signature = _signed(pair, signed_as)
    with pytest.raises(SignatureError, match=re.escape(why)):
        TrustPolicy((pair.public,)).check(
            payload, signature, DIGEST, "oci://registry.lan/prod/web:1"
        )


def test_each_kind_of_refusal_says_what_happened(pair: Pair, other: Pair) -> None:
    target = "oci://registry.lan/prod/web:1"
    policy = TrustPolicy((pair.public,))
    payload, signature = _signed(pair, "registry.lan/prod/web")
    other_payload, other_signature = _signed(other, "registry.lan/prod/web")
    elsewhere, elsewhere_signature = _signed(pair, "registry.lan/prod/web", "sha256:" + "cd" * 32)
    der = bytearray(base64.b64decode(signature))
    der[-1] ^= 1  # still DER, no longer the signature
    flipped = base64.b64encode(bytes(der)).decode()
    tampered = payload.replace(b"registry.lan", b"registry.evil")

    cases = [
        ((other_payload, other_signature, None), "verifies with none of the 1 key"),
        ((other_payload, other_signature, other.fingerprint), f"made by key {other.fingerprint}"),
        ((elsewhere, elsewhere_signature, None), f"is for manifest sha256:{'cd' * 32}, not"),
        ((payload, flipped, pair.fingerprint), "does not verify: the payload or the signature"),
        ((tampered, signature, pair.fingerprint), "does not verify: the payload or the signature"),
        ((payload, "not base64!", None), "not base64 of a DER ECDSA signature"),
        ((payload, base64.b64encode(b"junk").decode(), None), "not base64 of a DER ECDSA"),
    ]
    for (data, sig, claimed), why in cases:
        with pytest.raises(SignatureError, match=why):
            policy.check(data, sig, DIGEST, target, claimed=claimed)
    with pytest.raises(SignatureError, match=r"\[trust\] keys is empty"):
        TrustPolicy().check(payload, signature, DIGEST, target)
    assert policy.check(payload, signature, DIGEST, target) == pair.fingerprint


def test_all_signatures_of_a_manifest_are_tried(pair: Pair, other: Pair) -> None:
    target = "oci://registry.lan/prod/web:1"

    def layer(key: Pair, reference: str) -> tuple[cosign.SignatureLayer, bytes]:
        payload, signature = _signed(key, reference)
        described = Descriptor(MEDIA_SIMPLE_SIGNING, sha256_bytes(payload), len(payload))
        return cosign.SignatureLayer(described, signature, key.fingerprint), payload

    policy = TrustPolicy((pair.public,), ("*",))
    foreign, good, wrong_image = layer(other, "web"), layer(pair, "web"), layer(pair, "db")
    _, both = cosign.signature_manifest([foreign[0], good[0]])
    parsed = cosign.parse_signature_manifest(both)

    assert policy.check_layers(
        list(zip(parsed, [foreign[1], good[1]], strict=True)), DIGEST, target
    ) == (pair.fingerprint)
    with pytest.raises(SignatureError, match="not one of the 1 key"):
        policy.check_layers([foreign], DIGEST, target)
    with pytest.raises(SignatureError, match="names 'db'"):  # the most telling refusal
        policy.check_layers([foreign, wrong_image], DIGEST, target)
    with pytest.raises(SignatureError, match=f"is not signed .*{signature_tag(DIGEST)}"):
        policy.check_layers([], DIGEST, target)


# --- [trust] in config.toml -------------------------------------------------------------------


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    (home / "imagekit").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in (config.HOME_ENV, config.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


def test_trust_is_read_from_config_toml(config_home: Path, pair: Pair, tmp_path: Path) -> None:
    (config_home / "imagekit" / "build.pub").write_bytes(pair.public.read_bytes())
    (config_home / "imagekit" / "config.toml").write_text(
        f'[trust]\nkeys = ["build.pub", "{other_pub(tmp_path)}"]\n'
        'require = ["oci://registry.lan/prod/*"]\n'
    )
    store = open_store(tmp_path / "store")

    assert store.trust.keys == (config_home / "imagekit" / "build.pub", other_pub(tmp_path))
    assert store.trust.require == ("oci://registry.lan/prod/*",)
    assert pair.fingerprint in store.trust.public_keys


def other_pub(tmp_path: Path) -> Path:
    path = tmp_path / "other.pub"
    if not path.exists():
        keys.generate(tmp_path / "other", "")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trust = 5\n", "trust must be a table ([trust]), not 5"),
        ("[trust]\nkey = []\n", "unknown setting(s) key; use keys, require"),
        ('[trust]\nkeys = "a.pub"\n', "keys must be a list of non-empty strings, not 'a.pub'"),
        ('[trust]\nkeys = [""]\n', "keys must be a list of non-empty strings"),
        ('[trust]\nkeys = ["/nonexistent/k.pub"]\n', "key file /nonexistent/k.pub does not exist"),
        ("[trust]\nrequire = 1\n", "require must be a list of non-empty strings, not 1"),
        ('[trust]\nrequire = ["*"]\n', "require needs keys"),
        ('[trust]\nkeys = ["PUB"]\nrequire = ["registry.lan/*"]\n', "must be an oci://HOST/REPO"),
    ],
)
def test_invalid_trust_settings_are_one_line_errors(
    config_home: Path, pair: Pair, text: str, message: str
) -> None:
    (config_home / "imagekit" / "config.toml").write_text(text.replace("PUB", str(pair.public)))
    with pytest.raises(RecipeError, match=r"config\.toml") as error:
        open_store(config_home / "store")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_no_environment_variable_sets_trust(
    config_home: Path, pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("IMAGEKIT_TRUST_KEYS", "IMAGEKIT_KEYS", "IMAGEKIT_TRUST"):
        monkeypatch.setenv(name, str(pair.public))
    assert open_store(tmp_path / "store").trust == TrustPolicy()


# --- signatures in the local store ------------------------------------------------------------


@pytest.fixture
def trusting(tmp_path: Path, pair: Pair) -> Store:
    return Store(tmp_path / "store", trust=TrustPolicy((pair.public,)))


def test_a_signed_image_verifies_and_keeps_its_name(trusting: Store, pair: Pair) -> None:
    manifest = add_image(trusting, "web:1")

    signed = trusting.sign("web:1", pair.private)

    tag = signature_tag(manifest.digest)
    assert signed.ref == f"web:{tag}" and signed.digest == manifest.digest
    assert (signed.signer, signed.reference) == (pair.fingerprint, "web")
    assert [s.to_json() for s in trusting.signatures("web:1")] == [signed.to_json()]
    assert trusting.image("web").digest == manifest.digest  # the bare name is not ambiguous
    assert [image.ref for image in trusting.images()] == ["web:1"]
    entry = trusting.resolve(signed.ref)
    assert entry.media_type == MEDIA_MANIFEST
    assert trusting.manifest(entry.digest)["layers"][0]["mediaType"] == MEDIA_SIMPLE_SIGNING
    assert trusting.fsck().ok
    [(layer, payload)] = stored_layers(trusting, manifest.digest)
    assert payload == cosign.make_payload("web", manifest.digest)
    assert layer.signer == pair.fingerprint


def test_signing_again_replaces_that_keys_signature_and_keeps_the_others(
    trusting: Store, pair: Pair, other: Pair
) -> None:
    manifest = add_image(trusting, "web:1")
    trusting.sign("web:1", pair.private)
    trusting.sign("web:1", other.private, reference="registry.lan/prod/web")
    trusting.sign("web:1", pair.private)

    layers = stored_layers(trusting, manifest.digest)
    assert [layer.signer for layer, _ in layers] == [other.fingerprint, pair.fingerprint]
    found = trusting.signatures("web:1")
    assert [s.signer for s in found] == [None, pair.fingerprint]
    assert found[0].problem is not None and "not one of the 1 key" in found[0].problem
    rotated = Store(trusting.root, trust=TrustPolicy((other.public,)))
    assert [s.reference for s in rotated.signatures("web:1") if s.signer] == [
        "registry.lan/prod/web"
    ]


def test_a_changed_manifest_has_no_signature_and_a_moved_one_is_refused(
    trusting: Store, pair: Pair
) -> None:
    signed = add_image(trusting, "web:1")
    trusting.sign("web:1", pair.private)
    changed = add_image(trusting, "web:1", b"other disk")  # web:1 now names another manifest

    assert trusting.signatures("web:1") == []
    # A signature copied to the changed manifest's tag still names the signed digest.
    trusting.tag(
        f"web:{signature_tag(changed.digest)}", signature_entry(trusting, signed.digest)[1]
    )
    [moved] = trusting.signatures("web:1")
    assert moved.signer is None and moved.problem is not None
    assert f"is for manifest {signed.digest}, not {changed.digest}" in moved.problem


def test_a_tampered_signature_or_payload_in_the_store_is_refused(
    trusting: Store, pair: Pair
) -> None:
    manifest = add_image(trusting, "web:1")
    trusting.sign("web:1", pair.private)
    [(layer, _)] = stored_layers(trusting, manifest.digest)
    ref = signature_entry(trusting, manifest.digest)[0]

    der = bytearray(base64.b64decode(layer.signature))
    der[-1] ^= 1
    flipped = cosign.SignatureLayer(
        layer.payload, base64.b64encode(bytes(der)).decode(), pair.fingerprint
    )
    forged = cosign.make_payload("web", manifest.digest, {"by": "someone else"})
    swapped = cosign.SignatureLayer(
        trusting.add_bytes(forged, MEDIA_SIMPLE_SIGNING), layer.signature, pair.fingerprint
    )
    for bad in (flipped, swapped):
        config, body = cosign.signature_manifest([bad])
        trusting.add_bytes(config, "application/vnd.oci.image.config.v1+json")
        trusting.tag(ref, trusting.add_bytes(body, MEDIA_MANIFEST))
        [refused] = trusting.signatures("web:1")
        assert refused.signer is None and refused.problem is not None
        assert "does not verify: the payload or the signature was changed" in refused.problem


def test_signatures_without_trusted_keys_are_listed_unverified(tmp_path: Path, pair: Pair) -> None:
    store = Store(tmp_path / "store")
    add_image(store, "web:1")
    store.sign("web:1", pair.private)
    [found] = store.signatures("web:1")
    assert found.signer is None
    assert found.problem is not None and "[trust] keys is empty" in found.problem


def test_a_damaged_signature_manifest_is_listed_with_its_problem(
    trusting: Store, pair: Pair
) -> None:
    manifest = add_image(trusting, "web:1")
    junk = trusting.add_bytes(b'{"schemaVersion": 2, "layers": 1}', MEDIA_MANIFEST)
    trusting.tag(f"web:{signature_tag(manifest.digest)}", junk)

    [found] = trusting.signatures("web:1")
    assert found.signer is None and "signature manifest is malformed" in (found.problem or "")
    assert trusting.image("web:1").digest == manifest.digest


def test_signing_a_signature_or_an_untagged_image_is_refused(trusting: Store, pair: Pair) -> None:
    manifest = add_image(trusting, "web:1")
    signed = trusting.sign("web:1", pair.private)
    with pytest.raises(RecipeError, match="is a signature, not an image"):
        trusting.sign(signed.ref, pair.private)
    trusting.untag("web:1")
    with pytest.raises(StoreError, match="not tagged: tag it"):
        trusting.sign(manifest.digest, pair.private)


def test_gc_keeps_signatures_of_kept_images_and_drops_them_with_their_image(
    trusting: Store, pair: Pair
) -> None:
    kept = add_image(trusting, "web:1")
    gone = add_image(trusting, "db:1", b"db disk")
    trusting.sign("web:1", pair.private)
    trusting.sign("db:1", pair.private)
    assert trusting.gc().removed_blobs == []

    trusting.remove("db:1")
    dry = trusting.gc(dry_run=True)
    assert dry.removed_signatures == [f"db:{signature_tag(gone.digest)}"]
    assert f"db:{signature_tag(gone.digest)}" in dict(trusting.refs())
    report = trusting.gc()

    assert report.removed_signatures == [f"db:{signature_tag(gone.digest)}"]
    assert report.removed_blobs == dry.removed_blobs
    assert len(report.removed_blobs) == 6  # disk, config, manifest; payload, sig config, sig
    assert [r for r, _ in trusting.refs()] == ["web:1", f"web:{signature_tag(kept.digest)}"]
    assert [s.signer for s in trusting.signatures("web:1")] == [pair.fingerprint]
    assert trusting.fsck().ok


def test_build_signs_what_it_tagged_and_opens_the_key_first(
    upstream: Upstream, tmp_path: Path, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.publish("Signed-1.qcow2", make_qcow2(tmp_path / "disk.qcow2", seed=11))
    recipe = upstream.recipe("Signed-1.qcow2", name="signed")
    encrypted = keys.generate(tmp_path / "enc", "right")
    store = Store(tmp_path / "store", trust=TrustPolicy((pair.public, encrypted.public)))

    monkeypatch.setenv(config.KEY_PASSPHRASE_ENV, "wrong")
    with pytest.raises(RecipeError, match="passphrase is wrong"):
        store.build(str(recipe), sign_key=encrypted.private)
    assert upstream.server.log() == [] and store.refs() == []

    result = store.build(str(recipe), sign_key=pair.private)
    assert [(s.ref, s.signer) for s in store.signatures(result.image.ref or "")] == [
        (f"signed:{signature_tag(result.image.digest)}", pair.fingerprint)
    ]


# --- the command line -------------------------------------------------------------------------


def run(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home,
        env={**ENV_WITHOUT_IMAGEKIT, "XDG_CONFIG_HOME": str(home / "xdg"), **(env or {})},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_cli_key_generate_sign_inspect(tmp_path: Path) -> None:
    secret = {config.KEY_PASSPHRASE_ENV: "s3cret"}
    made = run("key", "generate", "--output", "build", home=tmp_path, env=secret)
    assert made.returncode == 0, made.stderr
    fingerprint = spki_fingerprint(tmp_path / "build.pub")
    assert made.stdout == f"build.key (private)\nbuild.pub (public)\n{fingerprint}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.key", "build.pub"]
    assert stat.S_IMODE((tmp_path / "build.key").stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "build.key").read_bytes()

    store = tmp_path / "store"
    disk = tmp_path / "disk.qcow2"
    make_qcow2(disk, size=1 << 20, seed=2)
    imported = run("import", str(disk), "--name", "web:1", "--store", str(store), home=tmp_path)
    assert imported.returncode == 0, imported.stderr
    digest = Store(store).resolve("web:1").digest

    unsigned = run("sign", "web:1", "--key", "build.key", "--store", str(store), home=tmp_path)
    assert unsigned.returncode == 2 and "no passphrase for build.key" in unsigned.stderr
    signed = run(
        "sign", "web:1", "--key", "build.key", "--store", str(store), home=tmp_path, env=secret
    )
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout == (
        f"signed {digest} as web with key {fingerprint}\nweb:{signature_tag(digest)}\n"
    )

    before = run("inspect", "web:1", "--store", str(store), home=tmp_path)
    assert (
        f"signature:    cannot check the signature of {digest}: [trust] keys is empty"
        in before.stdout
    )
    (tmp_path / "xdg" / "imagekit").mkdir(parents=True)
    (tmp_path / "xdg" / "imagekit" / "config.toml").write_text(
        f'[trust]\nkeys = ["{tmp_path / "build.pub"}"]\n'
    )
    shown = run("inspect", "web", "--store", str(store), home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"signed:       by {fingerprint} as web\n" in shown.stdout
    as_json = json.loads(
        run("inspect", "web:1", "--json", "--store", str(store), home=tmp_path).stdout
    )
    assert [s["signer"] for s in as_json["signatures"]] == [fingerprint]
    listed = json.loads(run("images", "--json", "--store", str(store), home=tmp_path).stdout)
    assert [row["ref"] for row in listed] == ["web:1"]


def test_cli_build_sign_key_signs_the_built_image(
    upstream: Upstream, tmp_path: Path, pair: Pair
) -> None:
    upstream.publish("Cli-1.qcow2", make_qcow2(tmp_path / "disk.qcow2", size=1 << 20, seed=12))
    recipe = upstream.recipe("Cli-1.qcow2", name="cli")
    store = tmp_path / "store"

    built = run(
        "build", str(recipe), "--sign-key", str(pair.private), "--store", str(store),
        home=tmp_path,
    )  # fmt: skip

    assert built.returncode == 0, built.stderr
    signed = Store(store, trust=TrustPolicy((pair.public,)))
    assert [s.signer for s in signed.signatures("cli:1")] == [pair.fingerprint]


# --- through a registry (Debian's docker-registry on 127.0.0.1) -------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "auth.json"))


def pushed(registry: RunningRegistry, store: Store, repository: str, disk: bytes) -> str:
    """Push a new one-disk image as ``repository:1``; its manifest digest."""
    name = repository.rsplit("/", 1)[-1]
    manifest = add_image(store, f"{name}:1", disk)
    store.push(f"{name}:1", registry.ref(repository))
    return manifest.digest


def refused_pull(
    registry: RunningRegistry, tmp_path: Path, repository: str, trust: TrustPolicy
) -> str:
    """Pull ``repository:1`` into an empty store that refuses it; the error, nothing stored."""
    empty = Store(tmp_path / f"empty-{repository.replace('/', '-')}", trust=trust)
    with pytest.raises(SignatureError) as refused:
        empty.pull(registry.ref(repository))
    assert empty.refs() == [] and list(empty.blobs_dir.iterdir()) == []
    return str(refused.value)


@pytest.mark.usefixtures("no_user_credentials")
def test_a_signature_travels_through_push_and_pull_and_is_required(
    registry: RunningRegistry, tmp_path: Path, pair: Pair
) -> None:
    source = Store(tmp_path / "source")
    manifest = add_image(source, "web:1", b"web disk")
    source.sign("web:1", pair.private)  # before the push: signed as "web"
    source.push("web:1", registry.ref("prod/web"))
    host = Store(tmp_path / "host", trust=TrustPolicy((pair.public,), ("oci://*/prod/*",)))

    image = host.pull(registry.ref("prod/web"))

    assert image.digest == manifest.digest
    [found] = host.signatures("web:1")
    assert (found.signer, found.reference) == (pair.fingerprint, "web")
    assert found.ref == f"web:{signature_tag(manifest.digest)}"
    assert host.gc().removed_blobs == [] and host.fsck().ok
    assert [r for r, _ in host.refs()] == ["web:1", found.ref]


@pytest.mark.usefixtures("no_user_credentials")
def test_pulls_are_refused_for_each_kind_of_tampering_and_store_nothing(
    registry: RunningRegistry, tmp_path: Path, pair: Pair, other: Pair
) -> None:
    source = Store(tmp_path / "source")
    trusted = TrustPolicy((pair.public,), ("*",))

    pushed(registry, source, "t/unsigned", b"unsigned")
    why = refused_pull(registry, tmp_path, "t/unsigned", trusted)
    assert "is not signed (no signature at tag sha256-" in why

    digest = pushed(registry, source, "t/wrongkey", b"wrong key")
    source.sign("wrongkey:1", other.private)
    source.push("wrongkey:1", registry.ref("t/wrongkey"))
    why = refused_pull(registry, tmp_path, "t/wrongkey", trusted)
    assert f"made by key {other.fingerprint}, which is not one of the 1 key" in why

    digest = pushed(registry, source, "t/named", b"named")
    source.sign("named:1", pair.private, reference=f"{registry.host}/t/other")
    source.push("named:1", registry.ref("t/named"))
    why = refused_pull(registry, tmp_path, "t/named", trusted)
    assert f"names '{registry.host}/t/other', another image than {registry.host}/t/named" in why

    # The image's manifest changed after signing: the new digest has no signature, and a
    # signature moved to its tag still names the signed digest.
    signed = pushed(registry, source, "t/changed", b"changed")
    source.sign("changed:1", pair.private)
    source.push("changed:1", registry.ref("t/changed"))
    changed = pushed(registry, source, "t/changed", b"changed, after signing")
    assert "is not signed" in refused_pull(registry, tmp_path, "t/changed", trusted)
    old = Registry(registry.host).get_manifest("t/changed", signature_tag(signed))
    Registry(registry.host).put_manifest(
        "t/changed", signature_tag(changed), old.body, MEDIA_MANIFEST
    )
    why = refused_pull(registry, tmp_path, "t/changed", trusted)
    assert f"is for manifest {signed}, not {changed}" in why

    # Signature bytes changed in the registry.
    digest = pushed(registry, source, "t/flipped", b"flipped")
    source.sign("flipped:1", pair.private)
    source.push("flipped:1", registry.ref("t/flipped"))
    sig = Registry(registry.host).get_manifest("t/flipped", signature_tag(digest))
    [layer] = cosign.parse_signature_manifest(sig.body)
    der = bytearray(base64.b64decode(layer.signature))
    der[-1] ^= 1
    bad = cosign.SignatureLayer(layer.payload, base64.b64encode(bytes(der)).decode(), layer.signer)
    _, body = cosign.signature_manifest([bad])
    Registry(registry.host).put_manifest("t/flipped", signature_tag(digest), body, MEDIA_MANIFEST)
    why = refused_pull(registry, tmp_path, "t/flipped", trusted)
    assert "does not verify: the payload or the signature was changed after signing" in why


@pytest.mark.usefixtures("no_user_credentials")
def test_pulls_no_rule_covers_keep_whatever_signatures_there_are(
    registry: RunningRegistry, tmp_path: Path, pair: Pair
) -> None:
    source = Store(tmp_path / "source")
    pushed(registry, source, "dev/plain", b"plain")
    pushed(registry, source, "dev/signed", b"signed")
    source.sign("signed:1", pair.private)
    source.push("signed:1", registry.ref("dev/signed"))
    host = Store(tmp_path / "host", trust=TrustPolicy((pair.public,), ("oci://*/prod/*",)))

    assert host.pull(registry.ref("dev/plain")).ref == "plain:1"
    assert host.signatures("plain:1") == []
    host.pull(registry.ref("dev/signed"))
    assert [s.signer for s in host.signatures("signed:1")] == [pair.fingerprint]


@pytest.mark.usefixtures("no_user_credentials")
def test_signing_in_the_registry_and_pushing_local_signatures_merge(
    registry: RunningRegistry, tmp_path: Path, pair: Pair, other: Pair
) -> None:
    source = Store(tmp_path / "source")
    digest = pushed(registry, source, "prod/api", b"api")

    made = run(
        "sign", registry.ref("prod/api"), "--key", str(other.private), "--store",
        str(tmp_path / "cli-store"), home=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    tag = signature_tag(digest)
    assert made.stdout == (
        f"signed {digest} as {registry.host}/prod/api with key {other.fingerprint}\n"
        f"oci://{registry.host}/prod/api:{tag}\n"
    )
    source.sign("api:1", pair.private)
    source.push("api:1", registry.ref("prod/api"))  # adds the local signature, keeps the other

    remote = Registry(registry.host).get_manifest("prod/api", tag)
    layers = cosign.parse_signature_manifest(remote.body)
    assert [layer.signer for layer in layers] == [other.fingerprint, pair.fingerprint]
    for key in (pair, other):
        host = Store(
            tmp_path / f"host-{key.fingerprint[7:15]}", trust=TrustPolicy((key.public,), ("*",))
        )
        host.pull(registry.ref("prod/api"))
        assert key.fingerprint in [s.signer for s in host.signatures("api:1")]
    again = run(
        "sign", registry.ref("prod/api"), "--key", str(other.private), "--store",
        str(tmp_path / "cli-store"), home=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    layers = cosign.parse_signature_manifest(
        Registry(registry.host).get_manifest("prod/api", tag).body
    )
    assert sorted(layer.signer or "" for layer in layers) == sorted(
        [other.fingerprint, pair.fingerprint]
    )
