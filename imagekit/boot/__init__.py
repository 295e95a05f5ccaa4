"""From stored image to running VM: NoCloud seeds, boot checks, and libvirt VMs."""

from imagekit.boot.check import BootOptions, BootReport, boot_check
from imagekit.boot.cloudconfig import SeedSpec
from imagekit.boot.inventory import RemoveReport, VmInfo, unprovision, vms
from imagekit.boot.provision import ProvisionOptions, ProvisionReport, provision
from imagekit.boot.seed import SeedReport, make_nocloud_seed

__all__ = [
    "BootOptions",
    "BootReport",
    "ProvisionOptions",
    "ProvisionReport",
    "RemoveReport",
    "SeedReport",
    "SeedSpec",
    "VmInfo",
    "boot_check",
    "make_nocloud_seed",
    "provision",
    "unprovision",
    "vms",
]
