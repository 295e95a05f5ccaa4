"""Verify OpenPGP signatures with `gpgv` against a throwaway keyring of pinned keys only.

gpgv exits 0 and prints "Good signature" for expired or revoked keys and for a clearsigned file
with unsigned text added around the block. So only its `[GNUPG:]` status lines decide, every
signature must be good and by an allowed key, and the caller gets the signed bytes from
`gpgv --output`, never the input. The user's ~/.gnupg is never read or written.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.core.capped import EVIDENCE_MAX, read_capped
from imagekit.errors import SignatureError

_TIMEOUT = 60
_STATUS_PREFIX = "[GNUPG:] "
_CLEARSIGN_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"
_ARMOR_PREFIX = b"-----BEGIN PGP "
_INSTALL_HINT = "install GnuPG (Debian/Ubuntu: apt install gpgv gnupg; Fedora: dnf install gnupg2)"
_GOOD = "GOODSIG"
# Per-signature verdicts other than GOODSIG, and what they mean for the user.
_REFUSALS = {
    "BADSIG": "is BAD: the signed text was changed after it was signed",
    "EXPSIG": "has expired",
    "EXPKEYSIG": "was made by a key that has expired",
    "REVKEYSIG": "was made by a key that has been revoked",
}
# ERRSIG return codes (gpg's DETAILS file, plus 5 for a digest refused by --weak-digest).
_ERRSIG_REASONS = {
    "4": "uses a public-key algorithm gpgv does not support",
    "5": "uses a weak or unknown digest algorithm (SHA1 and older are refused)",
}


@dataclass(frozen=True)
class SignatureResult:
    """What a good signature proves: these bytes, signed by this key, at this time."""

    signed_data: bytes
    fingerprint: str
    signing_fingerprint: str
    created: int


@dataclass
class _Signature:
    verdicts: list[tuple[str, list[str]]] = field(default_factory=list)
    validsig: list[str] | None = None


@dataclass(frozen=True)
class _Session:
    """A temporary GNUPGHOME holding the keyring built from the pinned key files."""

    home: Path
    keyring: Path
    key_files: Sequence[Path]
    allowed: frozenset[str]

    def gpgv(self, *args: str) -> list[str]:
        """Run gpgv and return the VALIDSIG fields of the first signature, or raise."""
        command = ["gpgv", "--homedir", str(self.home), "--status-fd", "1"]
        command += ["--keyring", str(self.keyring), "--weak-digest", "SHA1", *args]
        done = _run(command)
        signatures = _signatures(done.stdout.decode("utf-8", "replace"))
        if not signatures:
            raise SignatureError(
                "no OpenPGP signature found: the signature (or clearsigned file) is empty, "
                "truncated or not OpenPGP data"
            )
        validsigs = [self._check(signature) for signature in signatures]
        if done.returncode != 0:
            raise SignatureError(
                f"gpgv rejected the file{_detail(done.stderr)}; it may be damaged or hold more "
                "than one signed message"
            )
        return validsigs[0]

    def _check(self, signature: _Signature) -> list[str]:
        """The signature's VALIDSIG fields if it is good and by an allowed key, else raise."""
        allowed = ", ".join(sorted(self.allowed)) or "none"
        for keyword, args in signature.verdicts:
            if keyword == "ERRSIG":
                raise SignatureError(self._unchecked(args, allowed))
            if keyword != _GOOD:
                raise SignatureError(f"the signature by key {args[0]} {_REFUSALS[keyword]}")
        validsig = signature.validsig
        if not signature.verdicts or validsig is None or len(validsig) < 10:
            raise SignatureError("gpgv did not confirm the signature as valid")
        if validsig[9].upper() not in self.allowed:
            raise SignatureError(
                f"the data is signed by key {validsig[9].upper()}, which is not pinned "
                f"(allowed fingerprints: {allowed}); refusing it"
            )
        return validsig

    def _unchecked(self, args: list[str], allowed: str) -> str:
        """Why gpgv could not check a signature (ERRSIG: keyid, algos, class, time, rc, fpr)."""
        key = args[6] if len(args) > 6 and args[6] != "-" else args[0]
        code = args[5] if len(args) > 5 else "?"
        if code == "9":
            files = ", ".join(str(path) for path in self.key_files)
            return (
                f"the signature was made by key {key}, which is in none of the key files "
                f"({files}; allowed fingerprints: {allowed}); check that the recipe pins the key "
                "this release is signed with"
            )
        reason = _ERRSIG_REASONS.get(code, f"could not be checked (gpg error code {code})")
        return f"the signature by key {key} {reason}"


def key_fingerprints(key_files: Sequence[Path]) -> list[str]:
    """Primary fingerprints (uppercase hex) of the public keys in `key_files`."""
    with tempfile.TemporaryDirectory(prefix="imagekit-gpg-") as home:
        found: list[str] = []
        for path in key_files:
            found += _read_key(path, Path(home))[1]
        return list(dict.fromkeys(found))


def is_clearsigned(data: bytes) -> bool:
    """True when the first PGP armor block in `data` is a cleartext signed message."""
    for line in data.split(b"\n"):
        if line.startswith(_ARMOR_PREFIX):
            return line.rstrip() == _CLEARSIGN_HEADER
    return False


def verify_clearsigned(
    data: bytes, key_files: Sequence[Path], allowed_fingerprints: Collection[str] | None = None
) -> SignatureResult:
    """Verify a clearsigned file; `signed_data` is only the text inside the signed block."""
    if not is_clearsigned(data):
        raise SignatureError(
            "the data is not clearsigned (no '-----BEGIN PGP SIGNED MESSAGE-----' block); "
            "if upstream publishes a separate .sig/.gpg file, use it as a detached signature"
        )
    with _session(key_files, allowed_fingerprints) as session:
        message, output = session.home / "message", session.home / "signed"
        message.write_bytes(data)
        validsig = session.gpgv("--output", str(output), str(message))
        return _result(output.read_bytes(), validsig)


def verify_detached(
    data: bytes,
    signature: bytes,
    key_files: Sequence[Path],
    allowed_fingerprints: Collection[str] | None = None,
) -> SignatureResult:
    """Verify `signature` (armored or binary) over all of `data`."""
    with _session(key_files, allowed_fingerprints) as session:
        signed, sig = session.home / "data", session.home / "signature"
        signed.write_bytes(data)
        sig.write_bytes(signature)
        return _result(data, session.gpgv(str(sig), str(signed)))


@contextmanager
def _session(
    key_files: Sequence[Path], allowed_fingerprints: Collection[str] | None
) -> Iterator[_Session]:
    if not key_files:
        raise SignatureError("no public key files given: pin at least one signing key")
    with tempfile.TemporaryDirectory(prefix="imagekit-gpg-") as tmp:
        home = Path(tmp)
        keys: list[bytes] = []
        fingerprints: list[str] = []
        for path in key_files:
            binary, found = _read_key(path, home)
            keys.append(binary)
            fingerprints += found
        keyring = home / "pinned.gpg"
        keyring.write_bytes(b"".join(keys))
        if allowed_fingerprints is None:
            allowed = frozenset(fingerprints)
        else:
            allowed = frozenset(fpr.replace(" ", "").upper() for fpr in allowed_fingerprints)
        yield _Session(home, keyring, key_files, allowed)


def _read_key(path: Path, home: Path) -> tuple[bytes, list[str]]:
    """The binary (dearmored) key material in `path` and its primary fingerprints."""
    data = read_capped(path, EVIDENCE_MAX, "key file", error=SignatureError)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty"]
    shown = _run([*gpg, "--show-keys", "--with-colons"], data)
    fingerprints = _primary_fingerprints(shown.stdout.decode("utf-8", "replace"))
    if shown.returncode != 0 or not fingerprints:
        raise SignatureError(
            f"key file {path} holds no usable OpenPGP public key{_detail(shown.stderr)}; "
            "replace it with the distribution's published public key"
        )
    if data[0] & 0x80:  # a binary packet header: gpgv reads it as is
        return data, fingerprints
    dearmored = _run([*gpg, "--dearmor"], data)
    if dearmored.returncode != 0 or not dearmored.stdout:
        raise SignatureError(f"cannot dearmor key file {path}{_detail(dearmored.stderr)}")
    return dearmored.stdout, fingerprints


def _primary_fingerprints(colons: str) -> list[str]:
    """Fingerprints from `--with-colons` output: the `fpr` record right after each `pub`."""
    found: list[str] = []
    previous = ""
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and previous == "pub" and len(fields) > 9:
            found.append(fields[9].upper())
        previous = fields[0]
    return found


def _signatures(status: str) -> list[_Signature]:
    """Group gpgv status lines by signature (each starts with NEWSIG)."""
    signatures: list[_Signature] = []
    for line in status.splitlines():
        if not line.startswith(_STATUS_PREFIX):
            continue
        keyword, *args = line.removeprefix(_STATUS_PREFIX).split()
        if keyword == "NEWSIG":
            signatures.append(_Signature())
        elif signatures and keyword in {_GOOD, "ERRSIG", *_REFUSALS}:
            signatures[-1].verdicts.append((keyword, args))
        elif signatures and keyword == "VALIDSIG":
            signatures[-1].validsig = args
    return signatures


def _result(signed_data: bytes, validsig: list[str]) -> SignatureResult:
    return SignatureResult(
        signed_data=signed_data,
        fingerprint=validsig[9].upper(),
        signing_fingerprint=validsig[0].upper(),
        created=int(validsig[2]),
    )


def _run(command: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            command, input=stdin, capture_output=True, timeout=_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise SignatureError(f"{command[0]} is not installed: {_INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise SignatureError(f"{command[0]} did not finish within {_TIMEOUT} s") from exc


def _detail(stderr: bytes) -> str:
    """The last line gpg printed, which usually names the problem."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return f" ({lines[-1].strip()})" if lines else ""
