"""The operations table: every ops module's rows, in the one order steps are applied in.

A step runs its operations in ``ORDER``, whatever order its TOML table lists them in, so a step
means the same however it is laid out. The order is part of every canonical step (and so of
every build key) and of docs/customize.md: never reorder it; place a new operation where it
must run.
"""

from __future__ import annotations

from collections.abc import Mapping

from imagekit.customize.ops import (
    accounts,
    files,
    firstboot,
    launch,
    passwords,
    selinux,
    ssh,
    sysprep,
    system,
)
from imagekit.customize.spec import OperationSpec

ORDER = (
    # the launch and packages first, so later operations can configure what was installed
    *("size", "network", "install", "hostname", "timezone"),
    "user",
    # files: delete before anything is written, so a glob cannot remove what this step adds
    *("delete", "mkdir", "copy_in", "upload", "move", "write", "append_line"),
    *("link", "touch", "truncate", "chmod"),
    *("run_command", "root_password", "password", "ssh_inject", "firstboot_command"),
    # clean-ups last
    *("sysprep", "selinux_relabel"),
)

_MODULES = (launch, system, accounts, files, passwords, ssh, firstboot, sysprep, selinux)


def _in_order() -> dict[str, OperationSpec]:
    rows = {spec.name: spec for module in _MODULES for spec in module.OPERATIONS}
    missing = sorted(set(rows) ^ set(ORDER))
    if missing or len(ORDER) != len(rows):
        raise RuntimeError(f"customize.table.ORDER and the ops modules disagree on {missing}")
    return {name: rows[name] for name in ORDER}


OPERATIONS: Mapping[str, OperationSpec] = _in_order()
