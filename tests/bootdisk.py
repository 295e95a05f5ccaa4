"""A bootable disk made in seconds without network, and the session fixture that stores it.

The disk is a FAT file system on the whole of a raw image, made bootable by ``syslinux``
(which writes its boot sector and loader through mtools, no loop device or root needed), with
the host's kernel from /boot and a busybox initramfs (plus the kernel modules it needs, from
modules.dep, as tests/installer_iso.py does). Its ``/init`` stands in for cloud-init just enough
to prove what a boot check hands the guest:

- it finds a NoCloud seed, the CD-ROM labelled ``cidata`` or the SMBIOS serial
  ``ds=nocloud;s=URL`` (then it fetches ``meta-data`` and ``user-data`` over qemu's network),
  and prints ``bootdisk: instance-id ...`` from its meta-data;
- it runs the user-data's ``runcmd`` entries (plain ones: the init is sh, not a YAML parser);
- with ``ssh_authorized_keys`` in the user-data and dropbear available, it creates the users
  named there with those keys and starts dropbear on port 22, and stays up;
- it prints ``bootdisk: ready`` and powers off, unless a command created ``/hold``.
"""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from imagekit.store import Store
from tests.installer_iso import BUSYBOX, _Cpio, _decompressed, _module_order, boot_kernel

MARKER = "bootdisk: ready"
DROPBEAR = Path("/usr/sbin/dropbear")
REF = "bootdisk:1"

_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "bootdisk: booted"
for module in $(cat /modules.order); do insmod "/modules/$module" 2>/dev/null; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
n=0
while [ ! -b /dev/sr0 ] && [ $n -lt 15 ]; do sleep 0.2; n=$((n + 1)); done
label() { dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' '; }
seed=""
for cd in /dev/sr*; do
    if [ -b "$cd" ] && [ "$(label "$cd")" = cidata ]; then
        mkdir -p /cidata && mount -t iso9660 -o ro "$cd" /cidata && seed=/cidata
        echo "bootdisk: seed on $cd"
    fi
done
serial=$(cat /sys/class/dmi/id/product_serial 2>/dev/null)
case "$serial" in
ds=nocloud\;s=http*)
    url=${serial#*;s=}
    mkdir -p /netseed && seed=/netseed
    for file in meta-data user-data; do wget -q -O "/netseed/$file" "$url$file"; done
    echo "bootdisk: seed from $url"
    ;;
esac
if [ -n "$seed" ]; then
    echo "bootdisk: $(grep instance-id "$seed/meta-data")"
    sed -n '/^runcmd:/,/^[^- ]/s/^- //p' "$seed/user-data" > /runcmd
    while read -r command; do sh -c "$command"; done < /runcmd
    if [ -x /usr/sbin/dropbear ] && grep -q 'ssh-' "$seed/user-data"; then
        grep -o 'ssh-[a-z0-9-]* [A-Za-z0-9+/=]*' "$seed/user-data" > /keys
        echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
        uid=1000
        for user in root $(sed -n 's/^ *- name: *//p' "$seed/user-data"); do
            home=/home/$user
            [ "$user" = root ] && home=/root
            [ "$user" = root ] || echo "$user:x:$uid:$uid::$home:/bin/sh" >> /etc/passwd
            mkdir -p "$home/.ssh" && cp /keys "$home/.ssh/authorized_keys"
            chmod 755 "$home" && chmod 700 "$home/.ssh" && chmod 600 "$home/.ssh/authorized_keys"
            owner=$(grep "^$user:" /etc/passwd | cut -d: -f3)
            chown -R "$owner:$owner" "$home"
            uid=$((uid + 1))
        done
        mkdir -p /etc/dropbear /var/log
        dropbear -R -E -s -p 22 && echo "bootdisk: sshd started"
        touch /hold
    fi
fi
echo "bootdisk: ready"
[ -e /hold ] && while :; do sleep 3600; done
poweroff -f
"""

_SYSLINUX_CFG = """SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=ttyS0 quiet panic=-1
"""


def build_bootdisk(dest: Path) -> Path:
    """Write the bootable disk to ``dest`` as qcow2."""
    for tool in ("mkfs.vfat", "syslinux", "mcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    kernel = boot_kernel()
    work = dest.parent / "bootdisk-work"
    work.mkdir(exist_ok=True)
    (work / "initrd.img").write_bytes(make_initramfs(kernel.name.removeprefix("vmlinuz-")))
    (work / "syslinux.cfg").write_text(_SYSLINUX_CFG)
    shutil.copyfile(kernel, work / "vmlinuz")
    raw = work / "disk.raw"
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(64 << 20)
    _run("mkfs.vfat", "-n", "BOOTDISK", str(raw))
    _run("syslinux", "--install", str(raw))
    files = [str(work / name) for name in ("vmlinuz", "initrd.img", "syslinux.cfg")]
    _run("mcopy", "-i", str(raw), *files, "::/")
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest))
    shutil.rmtree(work)
    return dest


def make_initramfs(kernel_version: str) -> bytes:
    """busybox, /init, the modules in load order, and dropbear with its libraries if present."""
    archive = _Cpio()
    for directory in ("bin", "dev", "etc", "proc", "sys", "modules", "usr", "usr/sbin"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, _INIT.encode())
    archive.add("etc/shells", stat.S_IFREG | 0o644, b"/bin/sh\n")
    names = []
    for module in _module_order(Path("/lib/modules") / kernel_version):
        name = module.name.split(".ko")[0] + ".ko"
        names.append(name)
        archive.add(f"modules/{name}", stat.S_IFREG | 0o644, _decompressed(module))
    archive.add("modules.order", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n")
    if DROPBEAR.exists():
        _add_program(archive, DROPBEAR)
    return gzip.compress(archive.finish(), compresslevel=1, mtime=0)


def _add_program(archive: _Cpio, program: Path) -> None:
    """A dynamically linked program and every library ``ldd`` names, at their own paths."""
    made = {"usr", "usr/sbin"}
    paths = [program]
    for line in subprocess.run(["ldd", str(program)], capture_output=True, text=True).stdout.split(
        "\n"
    ):
        words = [word for word in line.split() if word.startswith("/")]
        if words:
            paths.append(Path(words[0]))
    for path in paths:
        parts = path.parts[1:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in made:
                archive.add(directory, stat.S_IFDIR | 0o755)
                made.add(directory)
        archive.add(str(path).lstrip("/"), stat.S_IFREG | 0o755, path.resolve().read_bytes())


def has_sshd() -> bool:
    return DROPBEAR.exists()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session", name="bootdisk")
def bootdisk_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bootable disk as a qcow2 file, built once per session."""
    return build_bootdisk(tmp_path_factory.mktemp("bootdisk") / "bootdisk.qcow2")


@pytest.fixture(scope="module", name="boot_store")
def boot_store_fixture(tmp_path_factory: pytest.TempPathFactory, bootdisk: Path) -> Store:
    """A store holding the bootable disk as ``bootdisk:1``."""
    store = Store(tmp_path_factory.mktemp("bootstore") / "store")
    store.import_file(bootdisk, REF)
    return store
