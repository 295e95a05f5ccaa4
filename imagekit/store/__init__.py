"""The public face of imagekit: a :class:`Store` that pulls, builds, customizes and keeps images.

``Store`` is the OCI layout (:class:`imagekit.oci.layout.Layout`) plus the workflows composed from
the stages below it: its registry methods live in ``store/registry.py``, its machine methods
(boot, check, provision) in ``store/machines.py``, what they share in ``store/base.py``. The CLI
calls these methods and nothing else, so a Python caller has every option the command line has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from imagekit import config
from imagekit.errors import RecipeError
from imagekit.image import Image
from imagekit.oci import fsck, gc, retention, roots
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import signed_digest
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.store.machines import MachineMethods
from imagekit.store.registry import RegistryMethods, login
from imagekit.verify.trust import TrustPolicy

# The workflows load their stages on first use: `imagekit --help` and a cache-hit pull must not
# pay for the appliance, installer and download code (benchmarks/pull.py holds the start-up time).
if TYPE_CHECKING:
    from imagekit.build import BuildResult
    from imagekit.net.transport import Transport
    from imagekit.recipe import Recipe
    from imagekit.sources.session import NetworkOptions

__all__ = ["FsckReport", "GcReport", "Root", "Store", "login", "open_store"]

GcReport = gc.GcReport
FsckReport = fsck.FsckReport
Root = roots.Root


class Store(RegistryMethods, MachineMethods):
    """A store rooted at ``root``; creating one creates the layout if it is missing.

    ``mirror`` is used by pulls and builds that name none (the config file's ``mirror``);
    ``connections`` and ``mirrors`` likewise (config.toml's; see ``FetchOptions``);
    ``group`` is the group that may read what it writes (None: owner-only; see oci.access);
    ``trust`` says whose signatures count and which pulls need one (config.toml's ``[trust]``
    through :func:`open_store`; default: no trusted keys, nothing required).
    """

    @classmethod
    def default(cls) -> Store:
        """$IMAGEKIT_HOME, else /var/lib/imagekit for root, else $XDG_DATA_HOME/imagekit."""
        return cls(config.default_store())

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
        **network: Unpack[NetworkOptions],
    ) -> Image:
        """Fetch, verify and store a recipe's image (a Recipe, a recipe file or NAME[:VERSION]),
        or an image from a registry (``oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``).

        ``network`` takes the options of :class:`imagekit.sources.session.FetchOptions`: ``mirror``,
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
        from imagekit.recipe import load_recipe
        from imagekit.sources import http

        loaded = load_recipe(recipe, arch=arch) if isinstance(recipe, str) else recipe
        return http.pull(self._session(progress, network, transport), loaded, tag=tag)

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
        **network: Unpack[NetworkOptions],
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

        key = self._signing_key(sign_key, None) if sign_key is not None else None
        from imagekit.recipe import load_recipe

        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        session = self._session(progress, network, transport)
        remote = None
        if cache_from or cache_to:
            from imagekit.build.remote import CacheOptions, RemoteCache

            options = CacheOptions(cache_from, cache_to, insecure, transport, self.trust, key)
            remote = RemoteCache(self, options, session.progress)
        builder = Builder(session, use_cache, remote)
        result = build(builder, loaded, tag=tag)
        if key is not None:
            from imagekit.verify import stored

            ref = result.image.ref or result.image.digest
            stored.sign_ref(self, ref, key, None, digest=result.image.digest)
        return result

    def input_key(
        self,
        recipe: Recipe | str,
        *,
        known: Mapping[Path, str] | None = None,
        transport: Transport | None = None,
        **network: Unpack[NetworkOptions],
    ) -> str:
        """What a build of ``recipe`` depends on, as one ``sha256:`` key, found without building
        (build/inputs.py): equal keys build the same image. Reads the base's evidence through
        the metadata cache (``network`` as for :meth:`pull`) and verifies it; no launch.
        ``known`` maps recipe files (resolved paths) to keys worked out before: a base recipe
        found there is not worked out again."""
        from imagekit.build import Builder
        from imagekit.build.inputs import input_key
        from imagekit.recipe import load_recipe

        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        return input_key(Builder(self._session(None, network, transport)), loaded, known)

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

    def fsck(self) -> FsckReport:
        """Rehash every blob and check every ref's manifest, config and layers are present."""
        return fsck.fsck(self)


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
