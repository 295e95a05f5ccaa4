"""Which libosinfo OS an image is, so virt-install and virt-manager pick the right defaults.

virt-install (4.0 and later) wants ``--osinfo NAME`` and refuses a name its database lacks
("Unknown OS name"). The name is guessed from the image's recipe name and version
(``fedora-server`` 41 → ``fedora41``, ``centos-stream`` 9 → ``centos-stream9``) and kept only if
this host's osinfo-db has it; a release newer than the database falls back to the family's
``-unknown`` entry (``fedora-unknown``), and anything else to no OS at all (the caller then
prints ``detect=on,require=off``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

DATABASES = (Path("/usr/share/osinfo/os"), Path("/etc/osinfo/os"))  # osinfo-db, local additions
_READ_MAX = 256 << 10  # an OS entry is a few KiB; read no more than this of a file
_OS_ID = re.compile(r'<os\s+id="([^"]+)"')
_SHORT_ID = re.compile(r"<short-id>\s*([^<\s]+)\s*</short-id>")


@dataclass(frozen=True)
class OsInfo:
    """A libosinfo entry: the short name tools take and the URI libvirt metadata records."""

    short_id: str
    uri: str


def lookup(
    name: str | None, version: str | None, databases: tuple[Path, ...] = DATABASES
) -> OsInfo | None:
    """The entry for an image called ``name`` at ``version``, if the database knows one."""
    if not name:
        return None
    known = _database(databases)
    for candidate in candidates(name, version):
        if candidate in known:
            return OsInfo(candidate, known[candidate])
    return None


def candidates(name: str, version: str | None) -> list[str]:
    """Short ids to try, most specific first: the recipe name without its edition suffixes,
    with the version, then each family's ``-unknown`` entry."""
    parts = name.lower().split("-")
    families = ["-".join(parts[:count]) for count in range(len(parts), 0, -1)]
    exact = [f"{family}{version.lower()}" for family in families] if version else []
    return exact + [f"{family}-unknown" for family in families]


@functools.cache
def _database(databases: tuple[Path, ...]) -> dict[str, str]:
    """short-id → OS URI, from every entry in the databases (later ones override)."""
    known: dict[str, str] = {}
    for root in databases:
        for entry in sorted(root.glob("*/*.xml")) if root.is_dir() else ():
            try:
                with entry.open("rb") as f:
                    text = f.read(_READ_MAX).decode("utf-8", "replace")
            except OSError:
                continue
            os_id = _OS_ID.search(text)
            if os_id:
                known.update(dict.fromkeys(_SHORT_ID.findall(text), os_id.group(1)))
    return known
