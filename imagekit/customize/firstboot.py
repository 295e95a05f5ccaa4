"""First-boot commands: a systemd unit runs each one once, in order, then disables itself."""

from __future__ import annotations

FIRSTBOOT_DIR = "/usr/lib/imagekit/firstboot"
FIRSTBOOT_UNIT = "/etc/systemd/system/imagekit-firstboot.service"
FIRSTBOOT_WANTS = "/etc/systemd/system/multi-user.target.wants/imagekit-firstboot.service"
FIRSTBOOT_LOG = "/root/imagekit-firstboot.log"
