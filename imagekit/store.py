"""The public face of imagekit: a :class:`Store` that pulls, builds, customizes and keeps images.

``Store`` is the OCI layout (:class:`imagekit.oci.layout.Layout`) plus the workflows composed from
the stages below it. The CLI calls these methods and nothing else, so a Python caller has every
option the command line has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from imagekit import config
from imagekit.image import Image
from imagekit.oci import gc
from imagekit.oci.layout import Descriptor, Layout
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.recipe import Recipe, load_recipe

# The workflows load their stages on first use: `imagekit --help` and a cache-hit pull must not
# pay for the appliance, installer and download code (benchmarks/pull.py holds the start-up time).
if TYPE_CHECKING:
    from imagekit.boot import BootOptions, BootReport, SeedReport, SeedSpec
    from imagekit.build import BuildResult
    from imagekit.check import CheckReport, Profile
    from imagekit.net.transport import Transport
    from imagekit.sources import http

GcReport = gc.GcReport
FsckReport = gc.FsckReport


class Store(Layout):
    """A store rooted at ``root``; creating one creates the layout if it is missing.

    ``mirror`` is used by pulls and builds that name none (the config file's ``mirror``);
    ``group`` is the group that may read what it writes (None: owner-only; see oci.access).
    """

    def __init__(self, root: Path, *, mirror: str | None = None, group: str | None = None) -> None:
        super().__init__(root, group=group)
        self.mirror = mirror

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
        **network: Unpack[http.NetworkOptions],
    ) -> Image:
        """Fetch, verify and store a recipe's image (a Recipe, a recipe file or NAME[:VERSION]).

        ``network`` takes the options of :class:`imagekit.sources.http.FetchOptions`: ``mirror``,
        ``refresh``, ``offline``, ``allow_loopback_http``, ``metadata_ttl`` and ``keys_override``
        (key files that replace the recipe's pinned keys; recorded in provenance). ``transport``
        sets retries, timeouts or a requests Session of the caller's.
        """
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
        **network: Unpack[http.NetworkOptions],
    ) -> BuildResult:
        """Build a recipe: its base, then one cached qcow2 layer per customize step.

        ``network`` is as for :meth:`pull` (the base's download, an installer ISO).
        """
        from imagekit.build import Builder, build

        loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
        builder = Builder(self._session(progress, network, transport), use_cache)
        return build(builder, loaded, tag=tag)

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
        return [Image.from_descriptor(self, descriptor) for _, descriptor in self.refs()]

    def remove(self, ref: str) -> Descriptor:
        """Untag ``ref``; its blobs are freed by the next gc unless another ref uses them."""
        return self.untag(ref)

    def gc(
        self,
        *,
        extra_roots: Iterable[str] = (),
        remove_partial: bool = False,
        dry_run: bool = False,
    ) -> GcReport:
        """Remove blobs no ref (or extra root) reaches, and temps of processes that died."""
        return gc.collect(
            self, extra_roots=extra_roots, remove_partial=remove_partial, dry_run=dry_run
        )

    def fsck(self) -> FsckReport:
        """Rehash every blob and check every ref's manifest, config and layers are present."""
        return gc.fsck(self)


def open_store(path: str | Path | None = None) -> Store:
    """The store at ``path``, else ``IMAGEKIT_HOME`` or the config file's, else the default.

    The config file's (or ``IMAGEKIT_MIRROR``'s) mirror becomes the store's default mirror, and
    its ``group`` the group that may read the store.
    """
    settings = config.load_settings()
    root = Path(path) if path is not None else settings.store or config.default_store()
    return Store(root, mirror=settings.mirror, group=settings.group)
