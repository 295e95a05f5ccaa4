"""Running guests: the libguestfs appliance, growing filesystems, and supervised qemu VMs."""
