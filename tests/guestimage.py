"""A tiny busybox "Fedora" that libguestfs inspects as a real Linux guest, built with no network.

``guest_image`` is a session fixture: test modules import it (or conftest.py registers it) so
every guestfs test starts from the same base disk, made in one launch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.recipe import ScratchSource
from imagekit.sources.scratch import make_scratch_disk
from tests.events import Events

APPLETS = ["sh", "ls", "cat", "mkdir", "chmod", "echo", "ln", "touch", "true", "id", "rm", "mv"]
ZONE = "Europe/Berlin"

FILES = {
    "etc/os-release": 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n'
    'PRETTY_NAME="Fedora Linux 41 (imagekit test)"\n',
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:Nobody:/:/bin/false\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    "etc/group": "root:x:0:\nadm:x:4:\nwheel:x:10:\nusers:x:100:\nnobody:x:65534:\n",
    "etc/gshadow": "root:::\nadm:::\nwheel:::\nusers:::\nnobody:::\n",
    "etc/hostname": "localhost\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/fstab": "LABEL=root / ext4 defaults 0 1\n",
    "etc/selinux/config": "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
    "etc/ssh/ssh_host_ed25519_key": "not a real key\n",
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAnotreal root@localhost\n",
    "etc/ssh/sshd_config": "PermitRootLogin prohibit-password\n",
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/skel/.profile": "export PATH=/bin\n",
    "etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nHWADDR=52:54:00:12:34:56\n",
    "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "var/lib/dhclient/dhclient-eth0.leases": "lease {}\n",
    "var/log/messages": "Jan  1 00:00:00 localhost kernel: hello\n",
    "var/log/dnf.log": "installed things\n",
    "var/cache/dnf/packages.db": "cache\n",
    "root/.bash_history": "ls\n",
    "etc/issue": "Fedora Linux 41\n",
    "opt/old/a": "old\n",
    "opt/old/b": "old\n",
    "tmp/junk": "junk\n",
}
DIRECTORIES = {"root": 0o700, "home": 0o755, "tmp": 0o1777, "var/tmp": 0o1777, "dev": 0o755}
DIRECTORIES |= {"proc": 0o555, "sys": 0o555, "run": 0o755}
SIZE = 256 << 20


def build_guest_tree(dest: Path) -> None:
    """Lay out a minimal root filesystem at ``dest``: static busybox, accounts, config, logs."""
    (dest / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    for applet in APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "usr").mkdir()
    (dest / "usr" / "bin").symlink_to("../bin")
    for name, text in FILES.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    (dest / "etc" / "shadow").chmod(0o640)
    (dest / "etc" / "gshadow").chmod(0o640)
    for name, mode in DIRECTORIES.items():
        (dest / name).mkdir(exist_ok=True)
        (dest / name).chmod(mode)
    zone = dest / "usr" / "share" / "zoneinfo" / ZONE
    zone.parent.mkdir(parents=True)
    shutil.copy2(Path("/usr/share/zoneinfo") / ZONE, zone)


@dataclass(frozen=True)
class GuestImage:
    """The base disk (read-only: layer overlays on it) and the launches it took to make."""

    path: Path
    launches: int


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """A qcow2 of the tree above, made once per session with make_scratch_disk."""
    work = tmp_path_factory.mktemp("guest")
    build_guest_tree(work / "tree")
    disk = work / "base.qcow2"
    events = Events()
    make_scratch_disk(ScratchSource(size=SIZE, content=work / "tree"), disk, progress=events)
    disk.chmod(0o444)
    return GuestImage(disk, events.launches)
