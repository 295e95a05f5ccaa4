"""The public face of imagekit: a :class:`Store` that pulls, builds, customizes and keeps images.

``Store`` is the OCI layout (:class:`imagekit.oci.layout.Layout`) plus the workflows composed from
the stages below it. The CLI calls these methods and nothing else, so a Python caller has every
option the command line has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from imagekit import config
from imagekit.core.refs import parse_ref
from imagekit.errors import RecipeError
from imagekit.image import Image
from imagekit.oci import fsck, gc, retention, roots
from imagekit.oci.layout import Descriptor, Layout
from imagekit.oci.media import REF_ANNOTATION, signed_digest
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.recipe import Recipe, load_recipe
from imagekit.verify.trust import TrustPolicy

# The workflows load their stages on first use: `imagekit --help` and a cache-hit pull must not
# pay for the appliance, installer and download code (benchmarks/pull.py holds the start-up time).
if TYPE_CHECKING:
    from imagekit.boot import (
        BootOptions,
        BootReport,
        ProvisionOptions,
        ProvisionReport,
        RemoveReport,
        SeedReport,
        SeedSpec,
        VmInfo,
    )
    from imagekit.build import BuildResult
    from imagekit.check import CheckReport, Profile
    from imagekit.net.transport import Transport
    from imagekit.oci.multiarch import IndexPushReport
    from imagekit.oci.prune import PruneReport
    from imagekit.oci.transfer import PushReport
    from imagekit.sources import http, registry
    from imagekit.verify.keys import KeyFiles, PrivateKey
    from imagekit.verify.stored import Signature

GcReport = gc.GcReport
FsckReport = fsck.FsckReport
Root = roots.Root


class Store(Layout):
    """A store rooted at ``root``; creating one creates the layout if it is missing.

    ``mirror`` is used by pulls and builds that name none (the config file's ``mirror``);
    ``connections`` and ``mirrors`` likewise (config.toml's; see ``FetchOptions``);
    ``group`` is the group that may read what it writes (None: owner-only; see oci.access);
    ``trust`` says whose signatures count and which pulls need one (config.toml's ``[trust]``
    through :func:`open_store`; default: no trusted keys, nothing required).
    """

    def __init__(
        self,
        root: Path,
        *,
        mirror: str | None = None,
        group: str | None = None,
        trust: TrustPolicy | None = None,
        connections: int = config.DEFAULT_CONNECTIONS,
        mirrors: tuple[str, ...] = (),
    ) -> None:
        super().__init__(root, group=group)
        self.mirror = mirror
        self.connections = connections
        self.mirrors = mirrors
        self.trust = trust or TrustPolicy()

    @classmethod
    def default(cls) -> Store:
        """$IMAGEKIT_HOME, else /var/lib/imagekit for root, else $XDG_DATA_HOME/imagekit."""
        return cls(config.default_store())

    def _session(
        self,
        progress: ProgressCallback | None,
        network: http.NetworkOptions,
        transport: Transport | None = None,
    ) -> http.Session:
        from imagekit.net.transport import Transport
        from imagekit.sources import http

        options = http.FetchOptions(**network)
        if "connections" not in network:
            options = replace(options, connections=self.connections)
        if "mirrors" not in network:
            options = replace(options, mirrors=self.mirrors)
        if options.mirror is None:
            options = replace(options, mirror=self.mirror)
        return http.Session(self, options, progress or ignore_progress, transport or Transport())

    def pull(
        self,
        recipe: Recipe | str,
        *,
        tag: str | None = None,
        arch: str | None = None,
        progress: ProgressCallback | None = None,
        transport: Transport | None = None,
        insecure: bool = False,
        trust: TrustPolicy | None = None,
        **network: Unpack[http.NetworkOptions],
    ) -> Image:
        """Fetch, verify and store a recipe's image (a Recipe, a recipe file or NAME[:VERSION]),
        or an image from a registry (``oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``).

        ``network`` takes the options of :class:`imagekit.sources.http.FetchOptions`: ``mirror``,
        ``refresh``, ``offline``, ``allow_loopback_http``, ``metadata_ttl`` and ``keys_override``
        (key files that replace the recipe's pinned keys; recorded in provenance). ``transport``
        sets retries, timeouts or a requests Session of the caller's. For ``oci://`` pulls,
        ``insecure`` allows plain http to a registry off loopback, ``arch`` picks from a
        multi-arch index, and ``trust`` (default: the store's) says which pulls must be signed by
        whom; a refused signature leaves nothing stored. The image's signatures are kept with it.
        """
        from imagekit.oci.reference import SCHEME

        if isinstance(recipe, str) and recipe.startswith(SCHEME):
            from imagekit.oci.transfer import TransferOptions
            from imagekit.sources.registry import RegistryPull

            request = RegistryPull(
                tag=tag,
                arch=arch,
                insecure=insecure,
                transport=transport,
                trust=trust or self.trust,
                options=TransferOptions(progress=progress or ignore_progress),
            )
            return self.pull_registry(recipe, request, network).image
        if insecure or trust is not None:
            raise RecipeError("insecure and trust apply to oci:// pulls only")
        from imagekit.sources import http

        loaded = load_recipe(recipe, arch=arch) if isinstance(recipe, str) else recipe
        return http.pull(self._session(progress, network, transport), loaded, tag=tag)

    def pull_registry(
        self,
        ref: str,
        request: registry.RegistryPull,
        network: http.NetworkOptions | None = None,
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

    def build(
        self,
        recipe: Recipe | str,
        *,
        tag: str | None = None,
        use_cache: bool = True,
        progress: ProgressCallback | None = None,
        transport: Transport | None = None,
        sign_key: Path | None = None,
        cache_from: str | None = None,
        cache_to: str | None = None,
        insecure: bool = False,
        **network: Unpack[http.NetworkOptions],
    ) -> BuildResult:
        """Build a recipe: its base, then one cached qcow2 layer per customize step.

        ``network`` is as for :meth:`pull` (the base's download, an installer ISO). With
        ``sign_key`` the tagged result is signed (:meth:`sign`); the key is opened first, so a
        wrong passphrase fails before the build, not after it. ``cache_from`` / ``cache_to``
        (``oci://HOST/REPO``) share the layers through a registry (docs/build.md); the cache
        manifests pushed are signed with ``sign_key`` too, and the store's trust policy says
        which lookups need a signature. ``insecure`` allows plain http to that registry.
        """
        from imagekit.build import Builder, build
        from imagekit.build.remote import CacheOptions, RemoteCache

        key = self._signing_key(sign_key, None) if sign_key is not None else None
        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        session = self._session(progress, network, transport)
        remote = None
        if cache_from or cache_to:
            options = CacheOptions(cache_from, cache_to, insecure, transport, self.trust, key)
            remote = RemoteCache(self, options, session.progress)
        builder = Builder(session, use_cache, remote)
        result = build(builder, loaded, tag=tag)
        if key is not None:
            from imagekit.verify import stored

            ref = result.image.ref or result.image.digest
            stored.sign_ref(self, ref, key, None, digest=result.image.digest)
        return result

    def customize(
        self,
        ref: str,
        step: Mapping[str, Any],
        *,
        tag: str | None = None,
        base_dir: Path | None = None,
        use_cache: bool = True,
        progress: ProgressCallback | None = None,
    ) -> BuildResult:
        """Apply one ``[[customize]]``-style step to a stored image, as a new layer and ref."""
        from imagekit.build import Builder, customize_image

        builder = Builder(self._session(progress, {}), use_cache)
        return customize_image(builder, ref, step, tag=tag, base_dir=base_dir)

    def import_file(
        self,
        path: Path,
        ref: str,
        *,
        disk_format: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Image:
        """Store a local disk image of the user's own, recorded as unverified."""
        from imagekit.sources import local

        session = self._session(progress, {})
        return local.import_file(session, Path(path), ref, disk_format=disk_format)

    def boot(
        self,
        ref: str,
        options: BootOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> BootReport:
        """Boot a stored image on a throwaway overlay until it is ready (see BootOptions).

        BootError (with the console's tail) when it is not; the stored blobs are never written,
        and gc waits for the boot to end.
        """
        from imagekit.boot import BootOptions, boot_check

        with self.shared_lock():
            image = self.image(ref)
            return boot_check(
                self, image, options or BootOptions(), progress=progress or ignore_progress
            )

    def check(
        self,
        ref: str,
        profile: str | Profile,
        *,
        base_dir: Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> CheckReport:
        """Compare a stored image with an edition's profile, offline, in one read-only launch.

        ``profile`` is a name (``recipes/profiles/NAME.toml``), a ``.toml`` file (relative to
        ``base_dir``, default the current folder) or a loaded Profile. The report says each
        check's status; ``report.passed`` is False when a required check did not pass.
        """
        from imagekit.check import check_image, load_profile

        loaded = load_profile(profile, base_dir=base_dir) if isinstance(profile, str) else profile
        with self.shared_lock():
            image = self.image(ref)
            return check_image(self, image, loaded, progress=progress or ignore_progress)

    def provision(
        self,
        ref: str,
        options: ProvisionOptions,
        *,
        progress: ProgressCallback | None = None,
    ) -> ProvisionReport:
        """Define and start a libvirt VM on an overlay of a stored image (a gc root of kind
        ``vm``) or, with ``copy``, on a standalone copy; ``print_only`` makes nothing and
        reports the domain XML and the equivalent ``virt-install`` line."""
        from imagekit.boot import provision

        with self.shared_lock():
            image = self.image(ref)
            return provision(self, image, options, progress=progress or ignore_progress)

    def vms(self, *, connect: str | None = None) -> list[VmInfo]:
        """The libvirt domains imagekit provisioned on ``connect`` (None: libvirt's default)."""
        from imagekit.boot import vms

        return vms(self, connect)

    def unprovision(self, name: str, *, connect: str | None = None) -> RemoveReport:
        """Stop, undefine and delete a VM :meth:`provision` made, and drop its root."""
        from imagekit.boot import unprovision

        return unprovision(self, name, connect)

    @staticmethod
    def seed(dest: Path, spec: SeedSpec) -> SeedReport:
        """Write a NoCloud seed ISO for ``spec`` to ``dest``; nothing of it enters the store."""
        from imagekit.boot import make_nocloud_seed

        return make_nocloud_seed(dest, spec)

    def image(self, ref_or_digest: str) -> Image:
        """The stored image a ref or manifest digest names."""
        return Image.load(self, ref_or_digest)

    def images(self) -> list[Image]:
        """Every tagged image, sorted by ref."""
        return [Image.from_descriptor(self, descriptor) for _, descriptor in self._image_refs()]

    def summaries(self) -> list[dict[str, Any]]:
        """:meth:`Image.summary` of every tagged image, sorted by ref, reading only manifests
        not listed before (what ``imagekit images`` shows)."""
        from imagekit.image import summaries

        return summaries(self, self._image_refs())

    def _image_refs(self) -> list[tuple[str, Descriptor]]:
        # a signature (NAME:sha256-<hex>.sig) is not an image
        return [(r, d) for r, d in self.refs() if signed_digest(r.partition(":")[2]) is None]

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

    @staticmethod
    def _signing_key(path: Path, passphrase: str | None) -> PrivateKey:
        from imagekit.verify import keys

        return keys.load_private_key(path, passphrase)

    def remove(self, ref: str) -> Descriptor:
        """Untag ``ref``; its blobs are freed by the next gc unless another ref or a root
        (:meth:`roots`) uses them."""
        return self.untag(ref)

    def roots(self) -> list[Root]:
        """Files outside the store that back onto its blobs (``export --link``, ``provision``),
        by path."""
        return roots.load_all(self)

    def root_stale_reason(self, root: Root) -> str | None:
        """Why the next gc will drop ``root`` (its file is gone or no longer backs onto the
        store), or None while it keeps the image's blobs."""
        return roots.stale_reason(self, root)

    def add_root(self, path: Path, image: Image, *, kind: str) -> Root:
        """Record that the file at ``path`` backs onto ``image``'s disks, so gc keeps them.

        ``export --link`` records its overlays this way; the record is dropped by gc once the
        file is gone or backs onto something else.
        """
        digests = tuple(d.digest for d in image.disks)
        root = Root.new(Path(path), kind, image.digest, digests, image.ref)
        with self.shared_lock():
            return roots.add(self, root)

    def remove_root(self, path: Path) -> bool:
        """Forget the root at ``path`` (its blobs go at the next gc if nothing else needs them)."""
        return roots.remove(self, Path(path))

    def gc(
        self,
        *,
        extra_roots: Iterable[str] = (),
        remove_partial: bool = False,
        dry_run: bool = False,
        keep_last: int | None = None,
        older_than: timedelta | None = None,
    ) -> GcReport:
        """Remove blobs no ref, root or extra root reaches, temps of processes that died, and
        lock files nobody holds; roots whose file is gone are dropped first.

        With ``keep_last`` each image name keeps its N newest images and, with ``older_than``,
        also those younger than that; the other tags go first, except those a kept image is
        built on or a file outside the store backs onto (oci.retention).
        """
        policy = None
        if keep_last is not None:
            policy = retention.Policy(keep_last, older_than)
        elif older_than is not None:
            raise RecipeError("--older-than needs --keep-last N (the newest N always stay)")
        return gc.collect(
            self,
            extra_roots=extra_roots,
            remove_partial=remove_partial,
            dry_run=dry_run,
            policy=policy,
        )

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

    def fsck(self) -> FsckReport:
        """Rehash every blob and check every ref's manifest, config and layers are present."""
        return fsck.fsck(self)


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


def open_store(path: str | Path | None = None) -> Store:
    """The store at ``path``, else ``IMAGEKIT_HOME`` or the config file's, else the default.

    The config file's (or ``IMAGEKIT_MIRROR``'s) mirror becomes the store's default mirror, and
    its ``group`` the group that may read the store, its ``[trust]`` the store's trust policy.
    """
    settings = config.load_settings()
    root = Path(path) if path is not None else settings.store or config.default_store()
    trust = TrustPolicy(settings.trust_keys, settings.trust_require)
    return Store(
        root,
        mirror=settings.mirror,
        group=settings.group,
        trust=trust,
        connections=settings.connections,
        mirrors=settings.mirrors,
    )
