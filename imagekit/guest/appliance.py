"""Start the libguestfs appliance once per job, on KVM when it really works, else on TCG.

Some hosts expose a ``/dev/kvm`` that cannot run a Linux guest (nested or paravirtualised KVM
that aborts with "failed to set MSR" or hangs in early boot). libguestfs would then wait for
minutes, so before the first launch we boot the host's kernel under KVM for a moment and fall
back to TCG if it does not reach its first panic.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from imagekit import config
from imagekit.config import ACCEL_ENV
from imagekit.core.atomic import replace_file
from imagekit.errors import CustomizeError
from imagekit.progress import ProgressCallback, ProgressEvent, ignore_progress

PROBE_SECONDS = 3.0
MEMSIZE_MIB = 1280  # libguestfs's default appliance memory (`guestfish get-memsize`)
# Emulated, hardening a long-lived guest against its own processes (page zeroing, Spectre
# mitigations, slow RCU grace periods) is a cost that a one-job appliance gains nothing from;
# what it saves is measured in docs/customize.md, "The appliance".
TCG_KERNEL_ARGS = ("init_on_alloc=0", "mitigations=off", "rcupdate.rcu_expedited=1")


@dataclass(frozen=True)
class Drive:
    """A disk image to attach; ``format`` is never probed, so a raw file cannot pose as qcow2."""

    path: Path
    format: str
    readonly: bool = False


@dataclass(frozen=True)
class InspectedOS:
    """What libguestfs inspection found, typed, so manifests and steps need no handle."""

    root: str
    type: str
    distro: str
    product_name: str
    major: int
    minor: int
    arch: str
    hostname: str
    package_format: str
    package_management: str
    mountpoints: dict[str, str]
    uuids: dict[str, str]  # device -> filesystem UUID: how a record is checked against a disk

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: object) -> InspectedOS | None:
        """A recorded inspection back, or None if it is not one (older records have no UUIDs)."""
        if not isinstance(record, dict):
            return None
        try:
            inspected = cls(**record)
        except TypeError:
            return None
        tables = (inspected.mountpoints, inspected.uuids)
        if not all(
            isinstance(t, dict) and all(isinstance(v, str) for v in t.values()) for t in tables
        ):
            return None
        devices = set(inspected.mountpoints.values())
        if not devices or set(inspected.uuids) != devices or not all(inspected.uuids.values()):
            return None
        return inspected

    def with_hostname(self, hostname: str) -> InspectedOS:
        return replace(self, hostname=hostname)


def accel() -> str:
    """``kvm`` or ``tcg``, from $IMAGEKIT_ACCEL (kvm, tcg or auto) or a probe of /dev/kvm."""
    choice = config.accel_choice()
    if choice != "auto":
        return choice
    return "kvm" if kvm_probe()[0] else "tcg"


@functools.cache
def kvm_probe() -> tuple[bool, str]:
    """Whether KVM can boot a Linux kernel here, and why not.

    The test boot costs up to PROBE_SECONDS, so its verdict is kept on disk for this boot of
    the host, this qemu and this kernel: every later imagekit process reads it instead.
    """
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return False, f"/dev/kvm cannot be opened ({e.strerror})"
    qemu = shutil.which("qemu-system-x86_64")
    kernel = _probe_kernel()
    if platform.machine() != "x86_64" or qemu is None or kernel is None:
        return True, "KVM not probed (no x86_64 qemu or no readable kernel)"
    identity = _probe_identity(Path(qemu), kernel)
    cache = _probe_cache_file()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("identity") == identity:
            return bool(cached["usable"]), f"{cached['why']} (probed earlier this boot)"
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    usable, why = _test_boot(qemu, kernel)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        replace_file(
            cache, json.dumps({"identity": identity, "usable": usable, "why": why}).encode()
        )
    return usable, why


def _probe_identity(qemu: Path, kernel: Path) -> str:
    """What the verdict depends on: this boot of the host, the qemu binary and the kernel."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    parts = [boot, os.uname().release]
    for path in (qemu, kernel):
        info = path.stat()
        parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    return "|".join(parts)


def _probe_cache_file() -> Path:
    return config.host_cache_dir() / "kvm-probe.json"


def _test_boot(qemu: str, kernel: Path) -> tuple[bool, str]:
    # A kernel with no root device panics within a second on working KVM; panic=-1 reboots
    # at once and -no-reboot turns that into a clean exit. Broken KVM aborts or hangs.
    command = [qemu, "-accel", "kvm", "-M", "pc", "-cpu", "max", "-m", "128", "-nodefaults"]
    command += ["-display", "none", "-no-reboot", "-kernel", str(kernel)]
    command += ["-append", "panic=-1 quiet"]
    quiet = subprocess.DEVNULL
    probe = subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = probe.communicate(timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        probe.kill()  # a vCPU stuck in a broken KVM may not even die: do not wait long for it
        with contextlib.suppress(subprocess.TimeoutExpired):
            probe.wait(timeout=1)
        return False, f"a test boot under KVM did not finish within {PROBE_SECONDS:g} s"
    finally:
        if probe.stderr:
            probe.stderr.close()
    if probe.returncode != 0:
        lines = stderr.strip().splitlines()
        return False, f"a test boot under KVM failed: {lines[-1] if lines else probe.returncode}"
    return True, "a test boot under KVM worked"


def _probe_kernel() -> Path | None:
    """The kernel supermin would put in the appliance: $SUPERMIN_KERNEL or the newest in /boot."""
    chosen = config.supermin_kernel()
    if chosen is not None:
        return chosen

    def version(path: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", path.name)]

    kernels = [k for k in Path("/boot").glob("vmlinuz-*") if os.access(k, os.R_OK)]
    return max(kernels, key=version, default=None)


def launch(
    drives: Sequence[Drive],
    *,
    network: bool = False,
    memsize_mb: int | None = None,
    progress: ProgressCallback = ignore_progress,
) -> Any:
    """Add ``drives`` and launch the appliance; the caller must shut it down (see ``launched``)."""
    import guestfs  # loaded by the first launch only: a warm build never pays for it

    mode = accel()
    auto = config.accel_choice() == "auto"
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        for drive in drives:
            g.add_drive_opts(str(drive.path), format=drive.format, readonly=drive.readonly)
        settings = [s for s in g.get_backend_settings() if s not in ("force_tcg", "force_kvm")]
        if mode == "tcg" or not auto:  # an auto-chosen KVM keeps libguestfs's TCG fallback
            settings.append(f"force_{mode}")
        g.set_backend_settings(settings)
        if mode == "tcg":  # after $LIBGUESTFS_APPEND, which libguestfs has read
            g.set_append(" ".join(filter(None, [g.get_append(), *TCG_KERNEL_ARGS])))
        g.set_network(network)
        g.set_smp(min(2, os.cpu_count() or 1))  # boots ~30% faster under TCG
        if memsize_mb is not None:
            g.set_memsize(memsize_mb)
        why = kvm_probe()[1] if auto else f"set by {ACCEL_ENV}"
        # The "launch" event is how callers (and tests) count launches: a cache hit makes none.
        progress(ProgressEvent("launch", f"starting the libguestfs appliance ({mode}: {why})"))
        g.launch()
    except RuntimeError as e:
        g.close()
        raise CustomizeError(f"the libguestfs appliance failed to start: {e}. {_hint(mode)}") from e
    return g


def _hint(mode: str) -> str:
    if mode == "kvm":
        return (
            f"If KVM is unusable on this host, set {ACCEL_ENV}=tcg; "
            "run `libguestfs-test-tool` for a full diagnosis."
        )
    return "Run `libguestfs-test-tool` for a full diagnosis."


@contextmanager
def launched(
    drives: Sequence[Drive],
    *,
    network: bool = False,
    memsize_mb: int | None = None,
    progress: ProgressCallback = ignore_progress,
) -> Iterator[Any]:
    """``launch`` as a context: shut down cleanly on success (writes are flushed), always close."""
    g = launch(drives, network=network, memsize_mb=memsize_mb, progress=progress)
    try:
        yield g
        g.shutdown()
    except RuntimeError as e:
        raise CustomizeError(f"libguestfs failed: {e}") from e
    finally:
        g.close()


def find_root(g: Any) -> str:
    """The one operating system root on the disks; refuse none or several."""
    roots: list[str] = g.inspect_get_roots() or g.inspect_os()  # inspect once per launch
    if not roots:
        raise CustomizeError(
            "no operating system found on the disk: inspection needs a Linux root filesystem "
            "with /etc and /bin (or /usr/bin), and /etc/fstab or /etc/hosts"
        )
    if len(roots) > 1:
        raise CustomizeError(
            f"several operating systems found ({', '.join(roots)}): imagekit customizes "
            "single-OS images only"
        )
    return roots[0]


def mount_inspected(g: Any) -> InspectedOS:
    """Inspect the disk and mount its OS the way its fstab does, parents before children."""
    root = find_root(g)
    mountpoints: dict[str, str] = g.inspect_get_mountpoints(root)
    _mount(g, mountpoints)
    return InspectedOS(
        root=root,
        type=g.inspect_get_type(root),
        distro=g.inspect_get_distro(root),
        product_name=g.inspect_get_product_name(root),
        major=g.inspect_get_major_version(root),
        minor=g.inspect_get_minor_version(root),
        arch=g.inspect_get_arch(root),
        hostname=g.inspect_get_hostname(root),
        package_format=g.inspect_get_package_format(root),
        package_management=g.inspect_get_package_management(root),
        mountpoints=dict(mountpoints),
        uuids={device: _uuid(g, device) for device in sorted(set(mountpoints.values()))},
    )


def recorded_match(g: Any, recorded: object) -> InspectedOS | None:
    """A recorded inspection if the launched disks still match it, else None (inspect instead).

    ``inspect_os`` is most of a cold step under TCG (it probes every filesystem), so a record
    stands in for it while every device it mounts still carries the filesystem UUID recorded.
    """
    known = InspectedOS.from_json(recorded)
    if known is None or any(_uuid(g, dev) != uuid for dev, uuid in known.uuids.items()):
        return None
    return known


def mount_os(
    g: Any, known: InspectedOS | None, progress: ProgressCallback = ignore_progress
) -> InspectedOS:
    """Mount as ``known`` (a matching record) says; inspect and mount if it is None or fails."""
    if known is not None:
        try:
            _mount(g, known.mountpoints)
        except CustomizeError:
            g.umount_all()
        else:
            progress(ProgressEvent("inspect", "mounted as the recorded inspection says"))
            return known
    progress(ProgressEvent("inspect", "inspecting the guest (no recorded inspection matches)"))
    return mount_inspected(g)


def _uuid(g: Any, device: str) -> str:
    """The filesystem UUID on ``device``, "" if it has none or is not there."""
    try:
        return str(g.vfs_uuid(device))
    except RuntimeError:
        return ""


def _mount(g: Any, mountpoints: dict[str, str]) -> None:
    for mountpoint in sorted(mountpoints, key=lambda m: (len(m), m)):
        try:
            g.mount(mountpoints[mountpoint], mountpoint)
        except RuntimeError as e:
            raise CustomizeError(
                f"cannot mount {mountpoints[mountpoint]} on {mountpoint} as the guest's fstab "
                f"asks: {e}"
            ) from e
