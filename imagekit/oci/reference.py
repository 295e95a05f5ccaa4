"""Registry references, ``oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]``, checked once here.

Repository names follow the distribution spec (lowercase components separated by ``/``); tags
and digests the same rules as local refs (:mod:`imagekit.core.refs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagekit.core.refs import DIGEST_RE, TAG_RE
from imagekit.errors import RecipeError

SCHEME = "oci://"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")


@dataclass(frozen=True)
class RegistryRef:
    """``oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]``, validated; parse it with :meth:`parse`."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> RegistryRef:
        if not text.startswith(SCHEME):
            raise RecipeError(f"{text!r} is not a registry reference: write oci://HOST/REPO:TAG")
        host, slash, rest = text.removeprefix(SCHEME).partition("/")
        rest, at, digest = rest.partition("@")
        path, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not _HOST.fullmatch(host) or not slash:
            raise RecipeError(f"{text!r} names no valid registry host: write oci://HOST/REPO:TAG")
        if not _REPOSITORY.fullmatch(path) or len(path) > 255:
            raise RecipeError(
                f"invalid repository {path!r} in {text!r}: use lowercase letters, digits and "
                "'.', '_', '-' between them, components separated by '/'"
            )
        if colon and not re.fullmatch(TAG_RE, tag):
            raise RecipeError(f"invalid tag {tag!r} in {text!r}: use up to 128 of [A-Za-z0-9._-]")
        if at and not re.fullmatch(DIGEST_RE, digest):
            raise RecipeError(f"invalid digest {digest!r} in {text!r}: expected sha256:<64 hex>")
        return cls(host, path, tag or None, digest or None)

    @property
    def reference(self) -> str:
        """What the manifest endpoint takes: the digest if given, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    def but(self, *, tag: str | None = None, digest: str | None = None) -> RegistryRef:
        """The same repository at another tag or digest."""
        return RegistryRef(self.host, self.repository, tag, digest)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{SCHEME}{self.host}/{self.repository}{tag}{digest}"


def parse_host(text: str) -> str:
    """``HOST[:PORT]`` (an ``oci://`` prefix and a trailing ``/`` are accepted), validated."""
    host = text.removeprefix(SCHEME).rstrip("/")
    if not _HOST.fullmatch(host):
        raise RecipeError(f"{text!r} is not a registry host: write HOST or HOST:PORT")
    return host
