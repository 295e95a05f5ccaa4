"""Signing keys: ECDSA P-256 (cosign's default curve) in the PEM files openssl and cosign read.

``imagekit key generate`` writes the private key as PKCS#8 PEM, encrypted with the passphrase
unless it is empty, and the public key as a SubjectPublicKeyInfo PEM. Keys made by openssl load
too: PKCS#8 or SEC1 (``EC PRIVATE KEY``), encrypted or not. A key is named by its fingerprint,
the sha256 of its SubjectPublicKeyInfo DER, which is the same for the private key and its .pub.
The passphrase comes from ``$IMAGEKIT_KEY_PASSPHRASE`` (read by :mod:`imagekit.config`), else
from the terminal; with neither, nothing is asked and the command stops.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from imagekit import config
from imagekit.core import atomic
from imagekit.core.capped import read_capped
from imagekit.core.digest import sha256_bytes
from imagekit.errors import RecipeError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
KEY_MAX = 64 << 10  # a PEM key is a few hundred bytes
_CURVE = "secp256r1"
_MAKE_ONE = (
    "make one with `imagekit key generate` or "
    "`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
)
_P256_ONLY = f"imagekit signs and checks with ECDSA P-256 keys only (cosign's default); {_MAKE_ONE}"


@dataclass(frozen=True)
class KeyFiles:
    """What ``key generate`` wrote: the private key (0600), the public key, its fingerprint."""

    private: Path
    public: Path
    fingerprint: str


def fingerprint(key: PublicKey) -> str:
    """``sha256:<hex>`` of the key's SubjectPublicKeyInfo DER (``openssl pkey -pubout -outform
    DER | sha256sum`` gives the same hex)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256_bytes(der)


def key_paths(prefix: Path) -> tuple[Path, Path]:
    """``PREFIX.key`` and ``PREFIX.pub``: ``--output build`` names build.key and build.pub."""
    return prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")


def generate(prefix: Path, passphrase: str | None = None) -> KeyFiles:
    """A new P-256 key pair at ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``; neither may exist.

    ``passphrase`` None: $IMAGEKIT_KEY_PASSPHRASE, else asked twice on the terminal. An empty
    passphrase leaves the private key unencrypted.
    """
    private_path, public_path = key_paths(prefix)
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise RecipeError(f"{path} exists; remove it or choose another --output")
    secret = ask_passphrase(f"passphrase for {private_path}", confirm=True, given=passphrase)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if secret:
        encryption = serialization.BestAvailableEncryption(secret.encode())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, None)):
        try:
            created = atomic.create_file(path, data, mode=mode)
        except OSError as e:
            raise RecipeError(f"cannot write {path}: {e.strerror or e}") from e
        if not created:
            raise RecipeError(f"{path} appeared while the key was made; choose another --output")
    return KeyFiles(private_path, public_path, fingerprint(key.public_key()))


def load_private_key(path: Path, passphrase: str | None = None) -> PrivateKey:
    """The P-256 private key in PEM file ``path``; an encrypted one is opened with ``passphrase``
    (None: $IMAGEKIT_KEY_PASSPHRASE, else asked on the terminal)."""
    data = read_capped(path, KEY_MAX, "private key")
    if b"SIGSTORE PRIVATE KEY" in data or b"COSIGN PRIVATE KEY" in data:
        raise RecipeError(
            f"{path} is in cosign's own encrypted format, which imagekit does not read: use a "
            f"PKCS#8 or SEC1 PEM key ({_MAKE_ONE}); `cosign import-key-pair` takes such a key"
        )
    try:
        loaded = serialization.load_pem_private_key(data, None)
    except TypeError:  # encrypted: only now is a passphrase needed
        secret = _passphrase_for(path, passphrase)
        try:
            loaded = serialization.load_pem_private_key(data, secret)
        except (ValueError, UnsupportedAlgorithm):
            raise RecipeError(f"cannot decrypt {path}: the passphrase is wrong") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise RecipeError(f"cannot read {path} as a PEM private key: {e}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != _CURVE:
        raise RecipeError(f"{path} is {_kind(loaded)}; {_P256_ONLY}")
    return loaded


def _passphrase_for(path: Path, passphrase: str | None) -> bytes:
    secret = ask_passphrase(f"passphrase for {path}", confirm=False, given=passphrase)
    if not secret:
        raise RecipeError(
            f"{path} is encrypted and the passphrase is empty: set the key's passphrase in "
            f"{config.KEY_PASSPHRASE_ENV} or type it"
        )
    return secret.encode()


def load_public_key(path: Path) -> PublicKey:
    """The P-256 public key in PEM file ``path`` (SubjectPublicKeyInfo, as ``.pub`` files)."""
    data = read_capped(path, KEY_MAX, "public key")
    if b"PRIVATE KEY-----" in data:
        raise RecipeError(f"{path} holds a private key; name its public key (the .pub file)")
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise RecipeError(f"cannot read {path} as a PEM public key: {e}") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != _CURVE:
        raise RecipeError(f"{path} is {_kind(loaded)}; {_P256_ONLY}")
    return loaded


def ask_passphrase(what: str, *, confirm: bool, given: str | None = None) -> str:
    """``given``, else $IMAGEKIT_KEY_PASSPHRASE, else typed on the terminal (twice to confirm).

    Without a terminal nothing is read from stdin: a passphrase must never come from a pipe by
    accident, so the error names the variable instead.
    """
    if given is not None:
        return given
    value = config.key_passphrase()
    if value is not None:
        return value
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise RecipeError(
            f"no {what}: set {config.KEY_PASSPHRASE_ENV} (empty for an unencrypted key) "
            "or run on a terminal"
        ) from None
    first = getpass.getpass(f"{what[0].upper()}{what[1:]}: ")
    if confirm and getpass.getpass("Again: ") != first:
        raise RecipeError("the two passphrases differ; run again")
    return first


def _kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an EC key on curve {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__.lstrip('_')}"
