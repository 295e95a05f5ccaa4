"""Checksum files as distributions publish them, and the ways a parser could be fooled."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagekit.errors import ChecksumError
from imagekit.verify.checksums import ChecksumEntry, find_entry, parse_checksum_file

REAL = Path(__file__).resolve().parent / "data" / "real"
A256 = "a" * 64
B256 = "b" * 64
C512 = "c" * 128


@pytest.mark.parametrize(
    ("fixture", "filename", "digest", "size"),
    [
        (
            "Fedora-Cloud-44-1.7-aarch64-CHECKSUM",
            "Fedora-Cloud-Base-Generic-44-1.7.aarch64.qcow2",
            "55c60a3b80d3616a08705afd0459e75fe9f03c54aba7a46e4002a41a72fa0d5b",
            528154624,
        ),
        (
            "centos-stream9-x86_64-CHECKSUM",
            "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2",
            "bcebdc00511d6e18782732570056cfbc7cba318302748bfc8f66be9c0db68142",
            755043840,
        ),
        (
            "centos-stream10-x86_64-CHECKSUM",
            "CentOS-Stream-GenericCloud-x86_64-10-latest.x86_64.qcow2",
            "01851cfb3929274d36a96c5e45ec0772309f73f705a2ffacf404c67fe9966430",
            977993728,
        ),
        (
            "almalinux9-x86_64-CHECKSUM",
            "AlmaLinux-9-GenericCloud-9.8-20260526.x86_64.qcow2",
            "c397eed7023e92c841155831b1f47e26300e5bef0f0256c129322307c897a251",
            None,
        ),
        (
            "ubuntu-24.04-SHA256SUMS",
            "ubuntu-24.04-server-cloudimg-amd64.img",
            "d1940f7d69d343355e183dff1e08a59852d32e7309baa7a4bad8365b11b005ac",
            None,
        ),
    ],
)
def test_real_files_parse(fixture: str, filename: str, digest: str, size: int | None) -> None:
    entries = parse_checksum_file((REAL / fixture).read_text())
    assert find_entry(entries, filename) == ChecksumEntry(filename, "sha256", digest, size)


def test_fedora_armor_is_skipped_and_every_entry_has_its_size() -> None:
    entries = parse_checksum_file((REAL / "Fedora-Cloud-44-1.7-aarch64-CHECKSUM").read_text())
    assert len(entries) == 6
    assert all(entry.size is not None for entry in entries)


def test_gnu_binary_and_text_forms_and_dot_slash() -> None:
    text = f"{A256}  text.img\n{B256.upper()} *binary.img\n{A256}  ./here.img\n"
    entries = parse_checksum_file(text)
    assert [(e.filename, e.digest) for e in entries] == [
        ("text.img", A256),
        ("binary.img", B256),
        ("here.img", A256),
    ]


def test_sha512_lines_and_algorithm_choice() -> None:
    text = f"SHA512 (both.img) = {C512}\n{A256}  both.img\n{C512}  only512.img\n"
    entries = parse_checksum_file(text)
    assert find_entry(entries, "both.img").algorithm == "sha256"
    assert find_entry(entries, "both.img", "sha512").digest == C512
    assert find_entry(entries, "only512.img").algorithm == "sha512"
    with pytest.raises(ChecksumError, match=r"no sha256 digest for only512\.img"):
        find_entry(entries, "only512.img", "sha256")
    with pytest.raises(ChecksumError, match="unsupported checksum algorithm 'md5'"):
        find_entry(entries, "both.img", "md5")


def test_crlf_line_endings() -> None:
    text = f"# disk.img: 42 bytes\r\nSHA256 (disk.img) = {A256}\r\n"
    assert parse_checksum_file(text) == [ChecksumEntry("disk.img", "sha256", A256, 42)]


def test_other_algorithms_wrong_lengths_and_unsafe_names_are_skipped() -> None:
    text = "\n".join(
        [
            f"SHA1 (a.img) = {'d' * 40}",
            f"MD5 (a.img) = {'d' * 32}",
            f"SHA256 (short.img) = {A256[:-1]}",
            f"SHA512 (wrong.img) = {A256}",
            f"{A256}  /etc/passwd",
            f"{A256}  ../up.img",
            f"{A256}  dir/../up.img",
            f"{A256}  nul\0.img",
            f"{'d' * 40}  sha1.img",
            f"{A256}  ok.img",
        ]
    )
    assert [entry.filename for entry in parse_checksum_file(text)] == ["ok.img"]


def test_no_checksum_lines_names_the_source() -> None:
    with pytest.raises(ChecksumError, match="no checksum lines found in CHECKSUM-x"):
        parse_checksum_file("<html>not found</html>\n# comment\n\n", "CHECKSUM-x")


def test_duplicate_file_with_different_digests_is_refused() -> None:
    entries = parse_checksum_file(f"{A256}  disk.img\n{B256}  disk.img\n")
    with pytest.raises(ChecksumError, match="2 different sha256 digests"):
        find_entry(entries, "disk.img")


def test_duplicate_file_with_the_same_digest_is_fine() -> None:
    entries = parse_checksum_file(f"{A256}  disk.img\nSHA256 (disk.img) = {A256}\n")
    assert find_entry(entries, "disk.img").digest == A256


def test_missing_file_lists_at_most_ten_names() -> None:
    entries = parse_checksum_file("".join(f"{A256}  f{i:02}.img\n" for i in range(12)))
    with pytest.raises(ChecksumError) as error:
        find_entry(entries, "other.img")
    message = str(error.value)
    assert "other.img is not listed" in message
    assert "f09.img" in message
    assert "f10.img" not in message
    assert "and 2 more" in message


def test_conflicting_size_comments_leave_the_size_unknown() -> None:
    text = f"# disk.img: 1 bytes\n# disk.img: 2 bytes\nSHA256 (disk.img) = {A256}\n"
    assert find_entry(parse_checksum_file(text), "disk.img").size is None
