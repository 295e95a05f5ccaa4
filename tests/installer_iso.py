"""A stand-in installer ISO that speaks Anaconda's boot protocol, made in seconds without network.

It holds a ``.treeinfo`` naming ``images/pxeboot/vmlinuz`` (the host's kernel from /boot) and
``images/pxeboot/initrd.img``: busybox-static plus the kernel modules it needs, whose ``/init``
finds the kickstart the way Anaconda does (the OEMDRV CD, or ``inst.ks=http://...``), checks
that ``inst.stage2=hd:LABEL=...`` names a CD it can see, makes an ext2 file system on the whole
of /dev/vda, writes the files the kickstart names in ``# imagekit-test: write PATH TEXT`` lines,
and powers off (or reboots, as the kickstart says). ``behaviour`` makes it hang silently or
print an Anaconda-style traceback instead, for the watchdog tests.
"""

from __future__ import annotations

import gzip
import io
import lzma
import stat
from pathlib import Path

import pycdlib

LABEL = "IMAGEKIT-TEST-1"
BUSYBOX = Path("/bin/busybox")
# Disk, CD-ROM (IDE on qemu's pc machine), ISO 9660, and virtio-net for http delivery.
MODULES = ("virtio_pci", "virtio_blk", "ata_piix", "sr_mod", "isofs", "virtio_net", "ext4")

_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "imagekit-test installer: starting"
for module in $(cat /modules.order); do insmod "/modules/$module" 2>/dev/null; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.2; n=$((n + 1)); done
sleep 1
label() { dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' '; }
fail() {
    echo "An unknown error has occurred: $*"
    while :; do sleep 3600; done
}
BEHAVIOUR
cmdline=$(cat /proc/cmdline)
stage2=$(echo "$cmdline" | tr ' ' '\n' | sed -n 's/^inst.stage2=hd:LABEL=//p')
found=""
for cd in /dev/sr*; do [ "$(label "$cd")" = "$stage2" ] && found=$cd; done
[ -n "$found" ] || fail "installation source LABEL=$stage2 not found"
echo "imagekit-test installer: installation source $found"
ks=$(echo "$cmdline" | tr ' ' '\n' | sed -n 's/^inst.ks=//p')
case "$ks" in
http://*)
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    wget -q -O /ks.cfg "$ks" || fail "cannot fetch kickstart $ks"
    ;;
*)
    for cd in /dev/sr*; do
        if [ "$(label "$cd")" = OEMDRV ]; then
            mkdir -p /oemdrv
            mount -t iso9660 -o ro "$cd" /oemdrv && cp /oemdrv/ks.cfg /ks.cfg
        fi
    done
    ;;
esac
[ -f /ks.cfg ] || fail "no kickstart found"
echo "imagekit-test installer: kickstart read ($(wc -l < /ks.cfg) lines)"
mke2fs -q -L root /dev/vda || fail "mke2fs failed"
mkdir -p /target
mount /dev/vda /target || fail "cannot mount /dev/vda"
mkdir -p /target/root
cp /ks.cfg /target/root/anaconda-ks.cfg
sed -n 's/^# imagekit-test: write //p' /ks.cfg | while read -r path text; do
    echo "Installing: writing $path"
    mkdir -p "/target$(dirname "$path")"
    echo "$text" > "/target$path"
done
sync
umount /target
echo "imagekit-test installer: complete"
if grep -q '^reboot' /ks.cfg; then reboot -f; else poweroff -f; fi
"""

_BEHAVIOURS = {
    "install": "",
    "hang": "while :; do sleep 3600; done",
    "traceback": (
        'echo "Traceback (most recent call last):"\n'
        'echo "  File \\"/usr/lib64/python3.13/site-packages/pyanaconda/installation.py\\""\n'
        'echo "ValueError: stand-in installer failure"\n'
        "while :; do sleep 3600; done"
    ),
}

_TREEINFO = """[header]
type = productmd.treeinfo
version = 1.2

[release]
name = imagekit-test
short = ikt
version = 1

[tree]
arch = x86_64
build_timestamp = 0
platforms = x86_64
variants = Test

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""


def boot_kernel() -> Path:
    """A kernel in /boot whose modules exist, the cloud flavour first (it boots fastest)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda k: ("cloud" not in k.name, k))
    for kernel in kernels:
        if (Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-") / "modules.dep").exists():
            return kernel
    raise RuntimeError("no kernel in /boot with modules under /lib/modules")


def build_installer_iso(dest: Path, *, behaviour: str = "install", label: str = LABEL) -> Path:
    """Write the stand-in installer ISO to ``dest``."""
    kernel = boot_kernel()
    initrd = make_initramfs(kernel.name.removeprefix("vmlinuz-"), _BEHAVIOURS[behaviour])
    files = {  # ISO 9660 name -> (Rock Ridge name, bytes)
        "/TREEINFO.;1": (".treeinfo", _TREEINFO.encode()),
        "/IMAGES/PXEBOOT/VMLINUZ.;1": ("vmlinuz", kernel.read_bytes()),
        "/IMAGES/PXEBOOT/INITRD.IMG;1": ("initrd.img", initrd),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident=label)
    iso.add_directory("/IMAGES", rr_name="images")
    iso.add_directory("/IMAGES/PXEBOOT", rr_name="pxeboot")
    for iso_path, (rr_name, data) in files.items():
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=rr_name)
    iso.write(str(dest))
    iso.close()
    return dest


def make_initramfs(kernel_version: str, behaviour: str) -> bytes:
    """A gzipped newc cpio: busybox, /init, /dev/console, and the modules in load order."""
    modules = _module_order(Path("/lib/modules") / kernel_version)
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "modules"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, _INIT.replace("BEHAVIOUR", behaviour).encode())
    names = []
    for module in modules:
        name = module.name.split(".ko")[0] + ".ko"
        names.append(name)
        archive.add(f"modules/{name}", stat.S_IFREG | 0o644, _decompressed(module))
    archive.add("modules.order", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n")
    return gzip.compress(archive.finish(), compresslevel=1, mtime=0)


def _module_order(root: Path) -> list[Path]:
    """MODULES and their dependencies from modules.dep, dependencies first; builtins skipped."""
    deps: dict[str, list[str]] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {_module_name(path): path for path in deps}
    ordered: list[str] = []

    def visit(path: str) -> None:
        for dependency in deps[path]:
            visit(dependency)
        if path not in ordered:
            ordered.append(path)

    for name in MODULES:
        if name in by_name:  # absent from modules.dep: built into this kernel
            visit(by_name[name])
    return [root / path for path in ordered]


def _module_name(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")


def _decompressed(module: Path) -> bytes:
    """busybox insmod loads plain ELF only, so compressed modules are unpacked here."""
    data = module.read_bytes()
    if module.name.endswith(".xz"):
        return lzma.decompress(data)
    if module.name.endswith(".gz"):
        return gzip.decompress(data)
    if module.name.endswith(".zst"):
        import zstandard  # type: ignore[import-not-found]

        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=64 << 20))
    return data


class _Cpio:
    """Just enough of the newc format for an initramfs, device nodes included."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self.inode += 1
        self.out.write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self.out.write(name.encode() + b"\0")
        self._pad()
        self.out.write(data)
        self._pad()

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))
