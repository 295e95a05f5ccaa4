"""A store's images as machines: boot tests, edition checks, libvirt VMs, NoCloud seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.progress import ProgressCallback, ignore_progress
from imagekit.store.base import StoreBase

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
    from imagekit.check import CheckReport, Profile


class MachineMethods(StoreBase):
    """Boot, check and provision stored images; write seeds."""

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
