"""First-boot commands: a systemd unit runs each one once, in order, then disables itself.

The layout is virt-customize's (under /usr/lib/virt-sysprep), under imagekit's own name so the
two do not collide; scripts are numbered after those earlier layers added.
"""

from __future__ import annotations

import os

from imagekit.customize.context import Context
from imagekit.customize.spec import ArgKind, OperationSpec, check_command, each

FIRSTBOOT_DIR = "/usr/lib/imagekit/firstboot"
FIRSTBOOT_UNIT = "/etc/systemd/system/imagekit-firstboot.service"
FIRSTBOOT_WANTS = "/etc/systemd/system/multi-user.target.wants/imagekit-firstboot.service"
FIRSTBOOT_LOG = "/root/imagekit-firstboot.log"

FIRSTBOOT_SH = f"""#!/bin/sh
# Installed by imagekit: runs each first-boot script once, in order, then moves it away.
d={FIRSTBOOT_DIR}
for script in "$d"/scripts/*; do
    [ -x "$script" ] || continue
    echo "=== $script"
    "$script"
    echo "=== $script exited with $?"
    mv "$script" "$d/scripts-done/"
done >>{FIRSTBOOT_LOG} 2>&1
"""

FIRSTBOOT_SERVICE = f"""[Unit]
Description=imagekit first-boot commands
ConditionPathExistsGlob={FIRSTBOOT_DIR}/scripts/*
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={FIRSTBOOT_DIR}/firstboot.sh
RemainAfterExit=yes
TimeoutSec=0

[Install]
WantedBy=multi-user.target
"""


def _firstboot(ctx: Context, command: str) -> None:
    """A numbered script under FIRSTBOOT_DIR, run once by a systemd unit, as virt-customize."""
    g = ctx.g
    scripts = f"{FIRSTBOOT_DIR}/scripts"
    g.mkdir_p(scripts)
    g.mkdir_p(f"{FIRSTBOOT_DIR}/scripts-done")
    number = len(g.ls(scripts)) + len(g.ls(f"{FIRSTBOOT_DIR}/scripts-done")) + 1
    script = f"{scripts}/{number:04d}-imagekit"
    ctx.write(script, f"#!/bin/sh\n{command}\n")
    g.chmod(0o755, script)
    ctx.write(f"{FIRSTBOOT_DIR}/firstboot.sh", FIRSTBOOT_SH)
    g.chmod(0o755, f"{FIRSTBOOT_DIR}/firstboot.sh")
    g.mkdir_p(os.path.dirname(FIRSTBOOT_WANTS))
    ctx.write(FIRSTBOOT_UNIT, FIRSTBOOT_SERVICE)
    g.ln_sf(FIRSTBOOT_UNIT, FIRSTBOOT_WANTS)
    if not any(g.exists(p) for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        ctx.result.messages.append(
            f"firstboot_command: the guest has no systemd, so nothing will start {FIRSTBOOT_DIR}"
            "/firstboot.sh at boot"
        )


# fmt: off
OPERATIONS = (
    OperationSpec("firstboot_command", ArgKind.LIST, "'CMD+ARGS'", "run a command once at the "
        "guest's first boot (systemd unit imagekit-firstboot.service)", each(_firstboot),
        check=check_command),
)
# fmt: on
