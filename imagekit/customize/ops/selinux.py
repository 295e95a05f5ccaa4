"""selinux_relabel: have the guest relabel itself at its next boot."""

from __future__ import annotations

import re

from imagekit.customize.context import Context
from imagekit.customize.spec import ArgKind, OperationSpec


def _apply_selinux_relabel(ctx: Context, values: tuple[str, ...]) -> None:
    """Defer the relabel to the guest's next boot (virt-customize's fallback), like anaconda."""
    config = "/etc/selinux/config"
    if not ctx.g.is_file(config):
        ctx.result.messages.append("selinux_relabel: the guest has no SELinux config; skipped")
        return
    modes = re.findall(r"^\s*SELINUX\s*=\s*(\w+)", ctx.read(config), re.MULTILINE)
    if modes and modes[-1] == "disabled":
        ctx.result.messages.append("selinux_relabel: SELinux is disabled in the guest; skipped")
        return
    ctx.g.touch("/.autorelabel")


OPERATIONS = (
    OperationSpec(
        "selinux_relabel",
        ArgKind.FLAG,
        "",
        "relabel SELinux files at next boot (touch /.autorelabel) unless SELinux is disabled",
        _apply_selinux_relabel,
    ),
)
