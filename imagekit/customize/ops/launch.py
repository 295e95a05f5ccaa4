"""Operations that shape the launch instead of the guest: grow the disk, give it a network."""

from __future__ import annotations

import re

from imagekit.customize.spec import ArgKind, OperationSpec

SIZE = re.compile(r"(\+?)(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(value: str) -> tuple[bool, int]:
    """(relative, bytes) of "20G" or "+2G"; suffixes are powers of 1024."""
    match = SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError("expected a size like 20G or +2G (suffixes K, M, G, T are powers of 1024)")
    power = " KMGT".index(match[3].upper() or " ")
    return bool(match[1]), int(match[2]) << (10 * power)


def _check_size(value: str) -> None:
    parse_size(value)


# fmt: off
OPERATIONS = (
    OperationSpec("size", ArgKind.TEXT, "SIZE", "grow the disk to SIZE (20G) or by it (+2G), then "
        "its last partition, LVM volume and filesystem (before mounting)", None,
        check=_check_size),
    OperationSpec("network", ArgKind.FLAG, "", "give the appliance a network connection (install "
        "implies it)", None, network=True),
)
# fmt: on
