"""gpgv verification with real distribution files and with keys made on the spot."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from imagekit.errors import ChecksumError, SignatureError
from imagekit.verify.checksums import find_entry, parse_checksum_file
from imagekit.verify.openpgp import (
    is_clearsigned,
    key_fingerprints,
    verify_clearsigned,
    verify_detached,
)
from tests.gpgtools import TestKey, add_signing_subkey, clearsign, detach_sign, make_key, revoke

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "real"
KEYS = ROOT / "recipes" / "keys"
FEDORA_CHECKSUM = REAL / "Fedora-Cloud-44-1.7-aarch64-CHECKSUM"
FEDORA_44 = KEYS / "RPM-GPG-KEY-fedora-44-primary"
FEDORA_43 = KEYS / "RPM-GPG-KEY-fedora-43-primary"
FEDORA_44_FPR = "36F612DCF27F7D1A48A835E4DBFCF71C6D9F90A6"
UBUNTU_KEY = KEYS / "ubuntu-cloudimage-keyring.asc"
UBUNTU_FPR = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"
GOOD = "a" * 64
EVIL = "e" * 64
CHECKSUMS = f"SHA256 (disk.img) = {GOOD}\n".encode()


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestKey, TestKey]:
    """Two keys sharing a GNUPGHOME, so that one message can carry both signatures."""
    directory = tmp_path_factory.mktemp("signers")
    return make_key(directory, "pinned"), make_key(directory, "other")


def signed_entries(data: bytes) -> list[str]:
    return [entry.filename for entry in parse_checksum_file(data.decode())]


# Real files


def test_real_fedora_checksum_verifies_with_the_f44_key() -> None:
    result = verify_clearsigned(FEDORA_CHECKSUM.read_bytes(), [FEDORA_44])
    assert result.fingerprint == result.signing_fingerprint == FEDORA_44_FPR
    assert result.created == 1777044858
    assert b"PGP" not in result.signed_data
    entry = find_entry(
        parse_checksum_file(result.signed_data.decode()),
        "Fedora-Cloud-Base-Generic-44-1.7.aarch64.qcow2",
    )
    assert entry.size == 528154624


def test_real_fedora_checksum_accepts_a_spaced_pin() -> None:
    spaced = "36F6 12DC F27F 7D1A 48A8  35E4 DBFC F71C 6D9F 90A6"
    result = verify_clearsigned(FEDORA_CHECKSUM.read_bytes(), [FEDORA_44], [spaced.lower()])
    assert result.fingerprint == FEDORA_44_FPR


def test_real_fedora_checksum_fails_with_the_f43_key() -> None:
    with pytest.raises(SignatureError) as error:
        verify_clearsigned(FEDORA_CHECKSUM.read_bytes(), [FEDORA_43])
    message = str(error.value)
    assert FEDORA_44_FPR in message
    assert key_fingerprints([FEDORA_43])[0] in message
    assert str(FEDORA_43) in message


def test_real_fedora_checksum_with_a_forged_line_after_the_block() -> None:
    forged = FEDORA_CHECKSUM.read_bytes() + f"SHA256 (evil.qcow2) = {EVIL}\n".encode()
    result = verify_clearsigned(forged, [FEDORA_44])
    with pytest.raises(ChecksumError, match=r"evil\.qcow2 is not listed"):
        find_entry(parse_checksum_file(result.signed_data.decode()), "evil.qcow2")


def test_real_ubuntu_sums_verify_with_the_detached_signature() -> None:
    sums = (REAL / "ubuntu-24.04-SHA256SUMS").read_bytes()
    signature = (REAL / "ubuntu-24.04-SHA256SUMS.gpg").read_bytes()
    result = verify_detached(sums, signature, [UBUNTU_KEY])
    assert result.fingerprint == UBUNTU_FPR
    assert result.signed_data == sums
    with pytest.raises(SignatureError, match="BAD"):
        verify_detached(sums + f"{EVIL} *evil.img\n".encode(), signature, [UBUNTU_KEY])


def test_key_fingerprints_of_real_keys() -> None:
    assert key_fingerprints([FEDORA_44, UBUNTU_KEY, FEDORA_44]) == [FEDORA_44_FPR, UBUNTU_FPR]


# Clearsigned text and what is (not) covered


def test_clearsigned_round_trip_undoes_dash_escaping(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    text = b"- a line with a dash\n-----BEGIN PGP SIGNATURE-----\n" + CHECKSUMS
    signed = clearsign(pinned, text)
    assert b"- - a line" in signed
    before = int(time.time())
    result = verify_clearsigned(signed, [pinned.public_key])
    assert result.signed_data == text
    assert result.fingerprint == result.signing_fingerprint == pinned.fingerprint
    assert before - 60 <= result.created <= before + 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_unsigned_lines_around_the_block_are_not_signed_data(
    signers: tuple[TestKey, TestKey], where: str
) -> None:
    pinned, _ = signers
    forged_line = f"SHA256 (disk.img) = {EVIL}\nSHA256 (evil.img) = {EVIL}\n".encode()
    signed = clearsign(pinned, CHECKSUMS)
    forged = forged_line + signed if where == "before" else signed + forged_line
    assert "evil.img" in signed_entries(forged)  # a naive parser would be fooled
    result = verify_clearsigned(forged, [pinned.public_key])
    entries = parse_checksum_file(result.signed_data.decode())
    assert find_entry(entries, "disk.img").digest == GOOD
    with pytest.raises(ChecksumError):
        find_entry(entries, "evil.img")


def test_tampered_signed_text_is_refused(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    tampered = clearsign(pinned, CHECKSUMS).replace(GOOD.encode(), EVIL.encode())
    with pytest.raises(SignatureError, match="BAD"):
        verify_clearsigned(tampered, [pinned.public_key])


def test_a_second_signed_block_appended_is_refused(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    second = clearsign(pinned, f"SHA256 (evil.img) = {EVIL}\n".encode())
    with pytest.raises(SignatureError, match="more than one signed message"):
        verify_clearsigned(clearsign(pinned, CHECKSUMS) + second, [pinned.public_key])


def test_data_that_is_not_clearsigned(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    detached = detach_sign(pinned, CHECKSUMS)
    assert not is_clearsigned(CHECKSUMS)
    assert not is_clearsigned(detached)
    assert is_clearsigned(b"junk\r\n" + clearsign(pinned, CHECKSUMS).replace(b"\n", b"\r\n"))
    with pytest.raises(SignatureError, match="not clearsigned"):
        verify_clearsigned(CHECKSUMS + detached, [pinned.public_key])


# Which keys may sign


def test_signer_in_the_keyring_but_not_allowed(signers: tuple[TestKey, TestKey]) -> None:
    pinned, other = signers
    keys = [pinned.public_key, other.public_key]
    with pytest.raises(SignatureError, match=f"signed by key {other.fingerprint}.*not pinned"):
        verify_clearsigned(clearsign(other, CHECKSUMS), keys, [pinned.fingerprint])


def test_signer_missing_from_the_key_files(signers: tuple[TestKey, TestKey]) -> None:
    pinned, other = signers
    with pytest.raises(SignatureError, match=f"made by key {other.fingerprint}, which is in none"):
        verify_clearsigned(clearsign(other, CHECKSUMS), [pinned.public_key])


def test_every_signature_must_be_by_an_allowed_key(signers: tuple[TestKey, TestKey]) -> None:
    pinned, other = signers
    both = clearsign(pinned, CHECKSUMS, also=[other])
    keys = [pinned.public_key, other.public_key]
    assert verify_clearsigned(both, keys).fingerprint == pinned.fingerprint
    with pytest.raises(SignatureError, match=other.fingerprint):
        verify_clearsigned(both, keys, [pinned.fingerprint])
    with pytest.raises(SignatureError, match=other.fingerprint):
        verify_clearsigned(both, [pinned.public_key])


def test_signing_subkey_is_checked_against_its_primary(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    subkey = add_signing_subkey(key)
    result = verify_clearsigned(clearsign(key, CHECKSUMS), [key.public_key])
    assert (result.fingerprint, result.signing_fingerprint) == (key.fingerprint, subkey)
    with pytest.raises(SignatureError, match="not pinned"):
        verify_clearsigned(clearsign(key, CHECKSUMS), [key.public_key], [subkey])


def test_expired_key_is_refused(tmp_path: Path) -> None:
    three_days_ago = int(time.time()) - 3 * 86400
    key = make_key(tmp_path, expire="1d", created=three_days_ago)
    signed = clearsign(key, CHECKSUMS, at=three_days_ago + 60)
    with pytest.raises(SignatureError, match="key that has expired"):
        verify_clearsigned(signed, [key.public_key])


def test_revoked_key_is_refused(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    signed = clearsign(key, CHECKSUMS)
    with pytest.raises(SignatureError, match="key that has been revoked"):
        verify_clearsigned(signed, [revoke(key).public_key])


def test_sha1_signatures_are_refused(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    with pytest.raises(SignatureError, match="weak or unknown digest"):
        verify_clearsigned(clearsign(pinned, CHECKSUMS, digest="SHA1"), [pinned.public_key])


# Detached signatures


@pytest.mark.parametrize("armor", [True, False])
def test_detached_signature(signers: tuple[TestKey, TestKey], armor: bool) -> None:
    pinned, other = signers
    signature = detach_sign(pinned, CHECKSUMS, armor=armor)
    assert verify_detached(CHECKSUMS, signature, [pinned.public_key]).signed_data == CHECKSUMS
    with pytest.raises(SignatureError, match="BAD"):
        verify_detached(CHECKSUMS + b"\n", signature, [pinned.public_key])
    with pytest.raises(SignatureError, match=pinned.fingerprint):
        verify_detached(CHECKSUMS, signature, [other.public_key])


def test_garbage_signature(signers: tuple[TestKey, TestKey]) -> None:
    pinned, _ = signers
    with pytest.raises(SignatureError, match="no OpenPGP signature"):
        verify_detached(CHECKSUMS, b"not a signature", [pinned.public_key])


# Key files and environment


def test_binary_key_file(signers: tuple[TestKey, TestKey], tmp_path: Path) -> None:
    pinned, _ = signers
    binary = tmp_path / "key.gpg"
    dearmor = ["gpg", "--homedir", str(pinned.homedir), "--batch", "--dearmor"]
    binary.write_bytes(
        subprocess.run(dearmor, input=pinned.public_key.read_bytes(), capture_output=True).stdout
    )
    assert key_fingerprints([binary]) == [pinned.fingerprint]
    result = verify_clearsigned(clearsign(pinned, CHECKSUMS), [binary])
    assert result.fingerprint == pinned.fingerprint


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n")
    with pytest.raises(SignatureError, match=re.escape(f"key file {junk} holds no usable")):
        key_fingerprints([junk])
    missing = tmp_path / "missing.asc"
    with pytest.raises(SignatureError, match=re.escape(f"cannot read key file {missing}")):
        verify_detached(b"", b"", [missing])
    with pytest.raises(SignatureError, match="no public key files"):
        verify_detached(b"", b"", [])


def test_missing_gpgv_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SignatureError, match="not installed: install GnuPG"):
        verify_clearsigned(FEDORA_CHECKSUM.read_bytes(), [FEDORA_44])


def test_users_gnupg_home_is_not_touched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "gnupghome"))
    verify_clearsigned(FEDORA_CHECKSUM.read_bytes(), [FEDORA_44])
    key_fingerprints([UBUNTU_KEY])
    assert list(tmp_path.iterdir()) == []
