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
from imagekit.oci import gc, roots
from imagekit.oci.layout import Descriptor, Layout
from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.recipe import Recipe, load_recipe

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
    from imagekit.net.transport import Transport
    from imagekit.sources import http

GcReport = gc.GcReport
FsckReport = gc.FsckReport
Root = roots.Root


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
        return [Image.from_descriptor(self, descriptor) for _, descriptor in self.refs()]

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
    ) -> GcReport:
        """Remove blobs no ref, root or extra root reaches, temps of processes that died, and
        lock files nobody holds; roots whose file is gone are dropped first."""
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
