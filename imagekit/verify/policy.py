"""Verification policy: turn a checksum file, an optional signature and pinned keys into trust.

The levels say honestly what was proven:
``signed``: an OpenPGP signature by a pinned key covers the checksum line of the image;
``pinned``: the digest is written in the recipe (or typed by the user);
``checksum-over-tls``: an unsigned checksum file came over HTTPS, so it is what that server
publishes (CentOS Stream, AlmaLinux, Debian publish nothing stronger) but nobody signed it;
``unverified``: the user opted out (recipe ``insecure = true`` or ``imagekit import``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from imagekit.errors import ChecksumError, SignatureError, VerificationError
from imagekit.verify.checksums import ChecksumEntry, find_entry, parse_checksum_file
from imagekit.verify.openpgp import is_clearsigned, verify_clearsigned, verify_detached

SIGNED = "signed"
PINNED = "pinned"
CHECKSUM_OVER_TLS = "checksum-over-tls"
UNVERIFIED = "unverified"
# Strength of each level; a recipe's required level is met by any level at least as strong.
LEVELS = {UNVERIFIED: 0, CHECKSUM_OVER_TLS: 1, PINNED: 2, SIGNED: 2}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class VerifiedChecksums:
    """The entries of a checksum file that a signature covers (or all, when unsigned)."""

    entries: tuple[ChecksumEntry, ...]
    signer: str | None  # primary key fingerprint, None when no signature was checked
    signed_text: bytes


@dataclass(frozen=True)
class Expectation:
    """What the image bytes must hash to, and why we believe it."""

    level: str
    digests: Mapping[str, str] = field(default_factory=dict)  # algorithm -> hex
    size: int | None = None
    signer: str | None = None
    entry: ChecksumEntry | None = None

    def check(self, digests: Mapping[str, str], size: int, what: str) -> None:
        """Raise ChecksumError unless every expected digest (and size) matches."""
        if self.size is not None and size != self.size:
            raise ChecksumError(f"{what}: size {size} bytes, expected {self.size}")
        for algorithm, expected in self.digests.items():
            actual = digests.get(algorithm)
            if actual != expected:
                raise ChecksumError(
                    f"{what}: {algorithm} is {actual}, expected {expected}; the download is "
                    "corrupt or was tampered with, and was not stored"
                )


def verify_checksum_file(
    data: bytes,
    *,
    signature: bytes | None = None,
    keys: Sequence[Path] = (),
    fingerprints: Collection[str] | None = None,
    source: str = "checksum file",
) -> VerifiedChecksums:
    """Check the signature (when keys are given) and parse only the text it covers."""
    if keys:
        allowed = fingerprints or None
        if signature is not None:
            result = verify_detached(data, signature, keys, allowed)
        elif is_clearsigned(data):
            result = verify_clearsigned(data, keys, allowed)
        else:
            raise SignatureError(
                f"{source} is not signed, but keys are pinned: provide its detached signature "
                "(signature_url / --signature) or remove the keys and pin a digest instead"
            )
        signed_text, signer = result.signed_data, result.fingerprint
    elif signature is not None:
        raise SignatureError(f"a signature for {source} was given but no key to check it with")
    else:
        signed_text, signer = data, None
    try:
        text = signed_text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChecksumError(f"{source} is not UTF-8 text: {exc}") from exc
    return VerifiedChecksums(tuple(parse_checksum_file(text, source)), signer, signed_text)


def expectation_for(
    filename: str,
    *,
    checksums: VerifiedChecksums | None,
    pinned: Mapping[str, str],
    insecure: bool,
    over_tls: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Expectation:
    """Combine checksum file and pins into what the bytes must be. Refuse when nothing vouches.

    ``over_tls``: the recipe accepts an unsigned checksum file and it came over HTTPS.
    ``metadata``: digests upstream metadata (releases.json, Debian's JSON) states; they must
    agree with the rest but prove nothing by themselves, so they never raise the level.
    """
    digests = dict(pinned)
    for algorithm, digest in (metadata or {}).items():
        if digests.setdefault(algorithm, digest) != digest:
            raise ChecksumError(
                f"{filename} is pinned to {algorithm} {digests[algorithm]}, but upstream "
                f"metadata lists {digest}: upstream now offers other bytes under this version; "
                "drop the pin to take them, or keep it to stay on the image you pinned"
            )
    entry = None
    size = None
    if checksums is not None:
        entry = find_entry(checksums.entries, filename)
        size = entry.size
        listed = digests.setdefault(entry.algorithm, entry.digest)
        if listed != entry.digest:
            raise ChecksumError(
                f"{filename} is expected to have {entry.algorithm} {listed} (pinned or from "
                f"upstream metadata), but the checksum file lists {entry.digest}: one of them is "
                "wrong; the image was not fetched"
            )
    if checksums is not None and checksums.signer is not None:
        return Expectation(SIGNED, digests, size, checksums.signer, entry)
    if pinned:
        return Expectation(PINNED, digests, size, None, entry)
    if checksums is not None and over_tls:
        return Expectation(CHECKSUM_OVER_TLS, digests, size, None, entry)
    if insecure:
        return Expectation(UNVERIFIED, digests, size, None, entry)
    raise SignatureError(
        f"nothing vouches for {filename}: no signature by a pinned key and no pinned digest. "
        "Add keys (and a signed checksum file) or a sha256 pin to the recipe, set "
        'level = "checksum-over-tls" to trust an unsigned checksum file fetched over HTTPS, or '
        "set insecure = true to accept it unverified"
    )


def require_level(required: str, achieved: str, what: str) -> None:
    """Refuse an image whose evidence is weaker than its recipe demands."""
    if required and LEVELS[achieved] < LEVELS[required]:
        raise VerificationError(
            f"{what} is only {achieved}, but its recipe requires {required}; nothing was stored"
        )


def checksum_transport(url: str, *, allow_loopback_http: bool = False) -> str | None:
    """How a checksum file travels, when that counts for ``checksum-over-tls``; else None.

    Pass the FINAL URL (after redirects): that is where the bytes came from. ``https`` always
    counts. Plain ``http`` counts only to 127.0.0.1/localhost and only when the caller allows it
    (tests, a caching proxy on this host): the bytes never left the machine, and provenance
    records ``http-loopback`` so nobody mistakes it for TLS.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return "https"
    if parts.scheme == "http" and allow_loopback_http and parts.hostname in LOOPBACK_HOSTS:
        return "http-loopback"
    return None


def evidence_transport(
    final_urls: Sequence[str], *, allow_loopback_http: bool = False
) -> str | None:
    """The weakest :func:`checksum_transport` of every request that carried evidence."""
    kinds = [checksum_transport(url, allow_loopback_http=allow_loopback_http) for url in final_urls]
    if not kinds or None in kinds:
        return None
    return "http-loopback" if "http-loopback" in kinds else "https"


def refuse_downgrade(requested: str, final: str, what: str) -> None:
    """Refuse evidence asked for over https but redirected off it, where the level rests on TLS.

    Followed silently, such a redirect would let plain http (anyone on the path) supply what is
    then recorded as checksum-over-tls; even a loopback target is refused, as it was not asked for.
    """
    if urlsplit(requested).scheme == "https" and urlsplit(final).scheme != "https":
        raise VerificationError(
            f"{what} {requested} was redirected to {final}, off https: the level rests on TLS, "
            "so a downgrade proves nothing and the image was not fetched; use a mirror that "
            "serves it over https without redirecting to http"
        )
