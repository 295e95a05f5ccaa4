"""The registry side of a store: pull from and push to ``oci://`` registries, sign, prune."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.core.refs import parse_ref
from imagekit.errors import RecipeError
from imagekit.image import Image
from imagekit.oci import retention
from imagekit.oci.media import REF_ANNOTATION
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.store.base import StoreBase

# The workflows load their stages on first use: `imagekit --help` and a cache-hit pull must not
# pay for the appliance, installer and download code (benchmarks/pull.py holds the start-up time).
if TYPE_CHECKING:
    from imagekit.net.transport import Transport
    from imagekit.oci.multiarch import IndexPushReport
    from imagekit.oci.prune import PruneReport
    from imagekit.oci.transfer import PushReport
    from imagekit.sources import registry
    from imagekit.sources.session import NetworkOptions
    from imagekit.verify.keys import KeyFiles
    from imagekit.verify.stored import Signature


class RegistryMethods(StoreBase):
    """Push, pull from, sign in and prune registries; keep and check signatures."""

    def pull_registry(
        self,
        ref: str,
        request: registry.RegistryPull,
        network: NetworkOptions | None = None,
    ) -> registry.Pulled:
        """:meth:`pull` of an ``oci://`` reference, also saying which blobs were fetched."""
        from imagekit.sources import registry

        given = sorted(name for name, value in (network or {}).items() if value)
        if given:
            raise RecipeError(
                f"{', '.join(given)} apply to recipe pulls, not to a registry ({ref})"
            )
        return registry.pull(self, ref, request)

    def push(
        self,
        ref: str,
        target: str,
        *,
        insecure: bool = False,
        progress: ProgressCallback | None = None,
        transport: Transport | None = None,
        chunk_size: int | None = None,
    ) -> PushReport:
        """Copy a stored image (and the base it was built on) to ``oci://HOST/REPO[:TAG]``.

        Blobs the registry has are skipped, blobs another repository of it holds are mounted,
        the rest is uploaded in chunks (``chunk_size``, default 256 MiB) that resume after a
        kill. Without a tag the target gets the local ref's tag.
        """
        from imagekit.oci import transfer
        from imagekit.oci.reference import RegistryRef
        from imagekit.oci.registry import Registry
        from imagekit.verify import remote as signatures

        descriptor = self.resolve(ref)
        parsed = RegistryRef.parse(target)
        if parsed.tag is None and parsed.digest is None:
            local_ref = descriptor.annotations.get(REF_ANNOTATION)
            parsed = parsed.but(tag=parse_ref(local_ref).tag if local_ref else "latest")
        remote = Registry(
            parsed.host,
            transport=transport,
            insecure=insecure,
            repository=parsed.repository,
        )
        options = transfer.TransferOptions(
            chunk_size=chunk_size or transfer.DEFAULT_CHUNK, progress=progress or ignore_progress
        )
        with self.shared_lock():
            report = transfer.push(self, descriptor.digest, parsed, remote, options)
            signatures.push_stored(self, remote, parsed.repository, descriptor.digest, options)
            return report

    def push_index(
        self,
        images: Sequence[str],
        target: str,
        *,
        insecure: bool = False,
        progress: ProgressCallback | None = None,
        transport: Transport | None = None,
        chunk_size: int | None = None,
    ) -> IndexPushReport:
        """Push several stored images, one per architecture, as one OCI index at ``target``'s tag.

        Each of ``images`` is ``REF`` or ``REF=ARCH``: the architecture is the one the image's
        provenance records (recipes and builds record it), which ``=ARCH`` gives for an imported
        file (``amd64``, ``arm64``; ``x86_64`` works too). Every image goes up by digest with its
        base and signatures, as :meth:`push` sends it; then the index, under the tag. A pull
        picks the host's architecture from it, and ``sign oci://...`` signs the index.
        """
        from imagekit.oci import multiarch, transfer
        from imagekit.oci.reference import RegistryRef
        from imagekit.oci.registry import Registry
        from imagekit.verify import remote as signatures

        if not images:
            raise RecipeError("a multi-arch push needs at least one image")
        entries = []
        for text in images:
            ref, eq, given = text.partition("=")
            descriptor = self.resolve(ref)
            recorded = Image.from_descriptor(self, descriptor).config.get("arch")
            arch = multiarch.entry_arch(
                ref, recorded if isinstance(recorded, str) else None, given if eq else None
            )
            entries.append(multiarch.IndexEntry(ref, descriptor.digest, descriptor.size, arch))
        parsed = RegistryRef.parse(target)
        remote = Registry(
            parsed.host, transport=transport, insecure=insecure, repository=parsed.repository
        )
        options = transfer.TransferOptions(
            chunk_size=chunk_size or transfer.DEFAULT_CHUNK, progress=progress or ignore_progress
        )
        with self.shared_lock():
            report = multiarch.push_index(self, entries, parsed, remote, options)
            for entry in entries:
                signatures.push_stored(self, remote, parsed.repository, entry.digest, options)
            return report

    def published(
        self,
        target: str,
        *,
        sign_key: Path | None = None,
        insecure: bool = False,
        transport: Transport | None = None,
    ) -> str | None:
        """The manifest digest at ``oci://HOST/REPO:TAG`` if it is there and signed by the
        public half of ``sign_key`` (None: by a key of the store's ``[trust]``; with neither,
        being there is enough), else None."""
        from imagekit.oci.reference import RegistryRef
        from imagekit.oci.registry import Registry
        from imagekit.verify import remote

        ref = RegistryRef.parse(target)
        registry = Registry(
            ref.host, transport=transport, insecure=insecure, repository=ref.repository
        )
        digest = registry.manifest_digest(ref.repository, ref.reference)
        if digest is None:
            return None
        if sign_key is not None:
            keys = [self._signing_key(sign_key, None).public_key()]
        else:
            keys = list(self.trust.public_keys.values())
            if not self.trust.keys:
                return digest
        return digest if remote.signed_by(registry, ref.repository, digest, keys) else None

    def sign(
        self,
        ref: str,
        key_path: Path,
        *,
        reference: str | None = None,
        passphrase: str | None = None,
        insecure: bool = False,
        transport: Transport | None = None,
    ) -> Signature:
        """Sign an image with an EC P-256 PEM key, cosign's way (docs/oci.md, Signatures).

        A stored image (NAME[:TAG], digest): the signature is stored beside it, tagged
        ``NAME:sha256-<hex>.sig``, so push and pull carry it; ``reference`` (default: the
        image's name) is the payload's docker-reference: give the registry repository
        (``registry.lan/prod/web``) when podman hosts will check it. An image in a registry
        (``oci://HOST/REPO:TAG``): the signature goes to the registry, for ``HOST/REPO`` by
        default. An encrypted key is opened with ``passphrase``, else $IMAGEKIT_KEY_PASSPHRASE,
        else a prompt on the terminal.
        """
        key = self._signing_key(Path(key_path), passphrase)
        if ref.startswith("oci://"):
            from imagekit.verify import remote

            target = remote.Target(ref, insecure, transport)
            return remote.sign_target(self, target, key, reference)
        from imagekit.verify import stored

        return stored.sign_ref(self, ref, key, reference)

    def signatures(self, ref: str) -> list[Signature]:
        """The stored signatures of an image, each checked against this store's trusted keys."""
        from imagekit.verify import stored

        return stored.signatures(self, self.resolve(ref).digest, self.trust)

    @staticmethod
    def generate_key(prefix: Path, *, passphrase: str | None = None) -> KeyFiles:
        """Write a new signing key pair, ``PREFIX.key`` (PKCS#8 PEM, 0600; encrypted unless the
        passphrase is empty) and ``PREFIX.pub``; the passphrase as for :meth:`sign`."""
        from imagekit.verify import keys

        return keys.generate(Path(prefix), passphrase)

    def prune(
        self,
        target: str,
        *,
        keep_last: int,
        older_than: timedelta | None = None,
        dry_run: bool = False,
        insecure: bool = False,
        transport: Transport | None = None,
    ) -> PruneReport:
        """Retention in a registry repository (``oci://HOST/REPO``): delete by digest the
        manifests :meth:`gc`'s policy would untag, and their signatures (oci.prune)."""
        from imagekit.oci.prune import prune
        from imagekit.oci.reference import RegistryRef
        from imagekit.oci.registry import Registry

        parsed = RegistryRef.parse(target)
        if parsed.tag or parsed.digest:
            raise RecipeError(f"prune takes a repository, oci://HOST/REPO, not a tag: {target}")
        policy = retention.Policy(keep_last, older_than)
        remote = Registry(
            parsed.host, transport=transport, insecure=insecure, repository=parsed.repository
        )
        return prune(remote, parsed.repository, policy, dry_run=dry_run)


def login(
    host: str,
    username: str,
    password: str,
    *,
    insecure: bool = False,
    transport: Transport | None = None,
) -> Path:
    """Check credentials against a registry, then save them where podman looks (mode 0600).

    The file is $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json.
    """
    from imagekit.oci.auth import Credentials, save_login
    from imagekit.oci.reference import parse_host
    from imagekit.oci.registry import Registry

    host = parse_host(host)
    credentials = Credentials(username, password)
    Registry(host, transport=transport, insecure=insecure, credentials=credentials).ping()
    return save_login(host, credentials)
