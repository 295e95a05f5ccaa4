"""Typed errors. Each carries an exit code for the CLI and a message that says what to do."""

from __future__ import annotations


class ImagekitError(Exception):
    """Base of every error imagekit raises on purpose."""

    exit_code = 1


class RecipeError(ImagekitError):
    """A recipe (or a name/ref/argument the user typed) is malformed or unknown."""

    exit_code = 2


class FetchError(ImagekitError):
    """A download failed: network, HTTP status, disk full, or a server that changed under us."""

    exit_code = 3


class VerificationError(ImagekitError):
    """Bytes or a checksum file could not be proven genuine."""

    exit_code = 4


class SignatureError(VerificationError):
    """An OpenPGP signature is missing, bad, or made by a key that is not pinned."""


class ChecksumError(VerificationError):
    """A checksum file is malformed, lacks the image, or disagrees with the bytes."""


class UnsafeImageError(ImagekitError):
    """A disk image is not the format promised or points outside itself (backing/data file)."""

    exit_code = 5


class StoreError(ImagekitError):
    """The local store is missing something, is locked, or is inconsistent."""

    exit_code = 6


class RefNotFoundError(StoreError):
    """No image is tagged with the given reference."""


class CustomizeError(ImagekitError):
    """A customization step failed inside the guest."""

    exit_code = 7


class BootError(ImagekitError):
    """A booted image did not become ready: no marker, no SSH login, or it failed on its console."""

    exit_code = 8


class CheckError(ImagekitError):
    """An image differs from its edition's profile in a required check, or cannot be read."""

    exit_code = 9
