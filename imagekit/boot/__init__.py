"""From stored image to running VM: NoCloud seeds, and boot checks on a throwaway overlay."""

from imagekit.boot.check import BootOptions, BootReport, boot_check
from imagekit.boot.cloudconfig import SeedSpec
from imagekit.boot.seed import SeedReport, make_nocloud_seed

__all__ = ["BootOptions", "BootReport", "SeedReport", "SeedSpec", "boot_check", "make_nocloud_seed"]
