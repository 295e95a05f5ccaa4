"""Which signatures a host accepts: the ``[trust]`` of config.toml, passed in, never ambient.

``keys`` are the public keys whose signatures count; ``require`` are globs of pull targets
(``oci://HOST/REPO:TAG``) that must carry one (``"*"``: every pull). A signature is accepted
when it verifies with one of the keys, its payload is cosign's simple signing, it names the
manifest digest pulled, and its docker-reference names the image pulled:

- a reference with a ``/`` (``registry.lan/prod/web``, as cosign and podman write it) must be
  the repository pulled from, ``HOST/REPO``;
- a bare name (``web``: an image signed in a local store before it was pushed) must be the
  repository's last component, the name a pull stores it under;
- a tag in the reference, when there is one (podman writes them), must be the tag pulled.

So a signed image moved to another repository or tag is refused; re-sign it there.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.errors import SignatureError
from imagekit.oci.media import signature_tag
from imagekit.oci.reference import SCHEME

# cryptography costs ~0.1 s to import; a store is opened by every command, and only signing and
# checking need it, so verify.cosign and verify.keys load on first use.
if TYPE_CHECKING:
    from imagekit.verify.cosign import SignatureLayer
    from imagekit.verify.keys import PublicKey

# Why a signature was refused, least telling first: the most telling one is reported.
_UNKNOWN_KEY, _DAMAGED, _TAMPERED, _OTHER_IMAGE = range(4)


@dataclass(frozen=True)
class TrustPolicy:
    """Trusted public key files and the pull targets (globs) that must be signed."""

    keys: tuple[Path, ...] = ()
    require: tuple[str, ...] = ()

    def requires_signature(self, target: str) -> bool:
        """Whether pulling ``target`` (``oci://HOST/REPO:TAG`` or ``@sha256:...``) needs one."""
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in self.require)

    @cached_property
    def public_keys(self) -> dict[str, PublicKey]:
        """The trusted keys by fingerprint, read on first use (RecipeError for a bad file)."""
        from imagekit.verify.keys import fingerprint, load_public_key

        loaded = [load_public_key(path) for path in self.keys]
        return {fingerprint(key): key for key in loaded}

    def check(
        self,
        payload: bytes,
        signature: str,
        manifest_digest: str,
        reference: str | None,
        *,
        claimed: str | None = None,
    ) -> str:
        """The fingerprint of the trusted key that signed ``payload`` for this image.

        ``reference`` is the pull target (``oci://HOST/REPO:TAG``, ``@sha256:`` allowed); None
        skips the reference rule (an image in the local store has no registry name).
        ``claimed`` is the key the signature layer says made it: it only words the error.
        SignatureError says which rule failed.
        """
        rank, result = self._check(payload, signature, manifest_digest, reference, claimed)
        if rank is not None:
            raise SignatureError(result)
        return result

    def check_layers(
        self,
        signatures: Sequence[tuple[SignatureLayer, bytes]],
        manifest_digest: str,
        reference: str | None,
    ) -> str:
        """The signer of the first acceptable signature of a signature manifest, given as
        (layer, payload bytes) pairs; else SignatureError with the most telling refusal."""
        refusals: list[tuple[int, SignatureError]] = []
        for layer, payload in signatures:
            rank, result = self._check(
                payload, layer.signature, manifest_digest, reference, layer.signer
            )
            if rank is None:
                return result
            refusals.append((rank, SignatureError(result)))
        if not refusals:
            raise SignatureError(
                f"{reference or manifest_digest} is not signed (no signature at tag "
                f"{signature_tag(manifest_digest)}) and [trust] require says it must be: sign "
                "it with `imagekit sign` and push it"
            )
        raise max(refusals, key=lambda refusal: refusal[0])[1]

    def _check(
        self,
        payload: bytes,
        signature: str,
        digest: str,
        reference: str | None,
        claimed: str | None,
    ) -> tuple[int | None, str]:
        """(None, signer) when accepted, else (rank, why) so several refusals can be ranked."""
        from imagekit.verify.cosign import parse_payload, verify_payload

        where = reference or digest
        if not self.keys:
            return _UNKNOWN_KEY, f"cannot check the signature of {where}: [trust] keys is empty"
        try:
            signer = verify_payload(payload, signature, list(self.public_keys.values()))
            claim = parse_payload(payload) if signer else None
        except SignatureError as e:
            return _DAMAGED, f"signature of {where} refused: {e}"
        if signer is None or claim is None:
            return self._unverified(where, claimed)
        if claim.digest != digest:
            return _OTHER_IMAGE, (
                f"signature of {where} is for manifest {claim.digest}, not {digest}: the image "
                "was changed after it was signed, or the signature belongs to another image"
            )
        mismatch = _reference_mismatch(claim.reference, reference)
        if mismatch:
            return _OTHER_IMAGE, f"signature of {where} {mismatch}; sign the image where it is"
        return None, signer

    def _unverified(self, where: str, claimed: str | None) -> tuple[int, str]:
        count = f"{len(self.keys)} key(s) in [trust] keys"
        if claimed is not None and claimed in self.public_keys:
            return _TAMPERED, (
                f"signature of {where} says trusted key {claimed} made it but does not verify: "
                "the payload or the signature was changed after signing; sign the image again"
            )
        if claimed is not None:
            return _UNKNOWN_KEY, (
                f"signature of {where} was made by key {claimed}, which is not one of the "
                f"{count}: add its public key to [trust] keys or sign with a trusted key"
            )
        return _UNKNOWN_KEY, (
            f"signature of {where} verifies with none of the {count}: it was made with "
            "another key, or changed after signing"
        )


def _split_reference(text: str) -> tuple[str, str | None]:
    """(repository, tag) of ``[oci://]HOST/REPO[:TAG][@sha256:...]`` or a bare ``NAME[:TAG]``."""
    rest = text.removeprefix(SCHEME).partition("@")[0]
    head, slash, last = rest.rpartition("/")
    name, colon, tag = last.partition(":")
    return head + slash + name, tag if colon else None


def _reference_mismatch(signed: str, target: str | None) -> str | None:
    """Why a payload's docker-reference does not name the pull target (module docstring)."""
    if target is None:
        return None
    signed_repo, signed_tag = _split_reference(signed)
    repository, tag = _split_reference(target)
    wanted = repository if "/" in signed_repo else repository.rpartition("/")[2]
    if signed_repo != wanted:
        return f"names {signed!r}, another image than {repository}"
    if signed_tag is not None and tag is not None and signed_tag != tag:
        return f"names tag {signed_tag!r}, not the tag pulled ({tag!r})"
    return None
