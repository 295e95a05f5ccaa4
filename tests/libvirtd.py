"""A private system-mode libvirtd for the provision tests, started and stopped by the test.

Debian's ``libvirtd`` runs as root in its own mount and PID namespaces (``unshare``): every
directory it writes (``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/log/libvirt``, ``/var/cache/libvirt``) is a bind mount of a temp directory, so the host's
libvirt state is never touched, and its sockets are in the temp directory too (the client
connects with ``qemu+unix:///system?socket=...``). It is the real thing otherwise: qemu runs as
``libvirt-qemu`` with libvirt's dynamic ownership, as on a host, so what the tests see about who
can read the backing chain is what a host does. There is no init system here: a small Python
init is PID 1 of the namespace (it reaps what libvirtd orphans), and killing the ``unshare``
(``--kill-child``) tears the namespace down with every qemu and ``virtlogd`` in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LIBVIRTD = Path("/usr/sbin/libvirtd")
QEMU_USER = "libvirt-qemu"
# (directory in the temp dir, what it replaces); /run/libvirt is made if the host has none.
_MOUNTS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
_CONF = """unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}"
"""
_INIT = r"""
import json, os, signal, subprocess, sys
spec = json.loads(sys.argv[1])
os.makedirs("/run/libvirt", exist_ok=True)
for source, target in spec["mounts"]:
    subprocess.run(["mount", "--bind", source, target], check=True)
subprocess.run(["virtlogd", "--daemon"], check=True)
daemon = subprocess.Popen(["libvirtd", "--config", spec["config"], "--pid-file", spec["pid"]])
signal.signal(signal.SIGTERM, lambda *_: daemon.terminate())
while os.waitpid(-1, 0)[0] != daemon.pid:
    pass
"""


@dataclass
class Libvirtd:
    """A running daemon: its URI, its temp directory, the ``unshare`` that holds it and the
    PID namespace everything it starts lives in."""

    uri: str
    root: Path
    process: subprocess.Popen[bytes]
    namespace: str | None = None

    @property
    def log(self) -> Path:
        return self.root / "libvirtd.log"

    def members(self) -> list[int]:
        """Live processes in the daemon's PID namespace: libvirtd, virtlogd, every qemu."""
        return _in_namespace(self.namespace) if self.namespace else []

    def stop(self) -> None:
        """SIGKILL the namespace's holder: the kernel kills libvirtd, virtlogd and every qemu."""
        self.process.kill()
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.2)


def _in_namespace(namespace: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            if "State:\tZ" in (entry / "status").read_text():
                continue  # a zombie is dead; its parent has not reaped it yet
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def qemu_running(name: str) -> bool:
    """Whether a qemu of the domain ``name`` is alive (libvirt names it ``guest=NAME,``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status or not cmdline[0].endswith(b"qemu-system-x86_64"):
            continue
        if f"guest={name},".encode() in b" ".join(cmdline):
            return True
    return False


def _pid_namespace_for_children(pid: int) -> str | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/pid_for_children")
        except OSError:
            return None
        if namespace != os.readlink("/proc/self/ns/pid"):
            return namespace
        time.sleep(0.05)  # unshare has not called unshare(2) yet
    return None


def start(root: Path, *, timeout: float = 60) -> Libvirtd:
    """Start libvirtd with its state in ``root`` and wait until its socket answers."""
    etc = root / "etc"
    shutil.copytree("/etc/libvirt", etc, ignore=shutil.ignore_patterns("qemu", "storage"))
    (etc / "qemu").mkdir()  # no domains, and no "default" network (it needs dnsmasq)
    for name, _ in _MOUNTS[1:]:
        (root / name).mkdir()
    sock = root / "sock"
    sock.mkdir()
    config = root / "libvirtd.conf"
    config.write_text(_CONF.format(sock=sock, log=root / "libvirtd.log"))
    spec = {
        "mounts": [(str(root / name), target) for name, target in _MOUNTS],
        "config": str(config),
        "pid": str(root / "libvirtd.pid"),
    }
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"]
    argv += ["--mount-proc", sys.executable, "-c", _INIT, json.dumps(spec)]
    output = (root / "init.log").open("wb")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    daemon = Libvirtd(f"qemu+unix:///system?socket={sock / 'libvirt-sock'}", root, process)
    # unshare's own PID namespace is ours; the one it made for its child is the daemon's.
    daemon.namespace = _pid_namespace_for_children(process.pid)
    deadline = time.monotonic() + timeout
    while not _answers(daemon.uri):
        if process.poll() is not None or time.monotonic() > deadline:
            daemon.stop()
            raise RuntimeError(f"libvirtd did not start: {(root / 'init.log').read_text()}")
        time.sleep(0.2)
    return daemon


def _answers(uri: str) -> bool:
    done = subprocess.run(["virsh", "-q", "-c", uri, "uri"], capture_output=True, timeout=30)
    return done.returncode == 0


def skip_reason() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "a system-mode libvirtd needs root"
    for tool in (str(LIBVIRTD), "virtlogd", "virsh", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs libvirt-daemon-system)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "python3-libvirt is not installed (scripts/setup.sh installs it)"
    return None


def traversable_dir(prefix: str) -> Path:
    """A temp directory qemu's user can pass through (mode 0711): pytest's are 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="module", name="libvirtd")
def libvirtd_fixture() -> Iterator[Libvirtd]:
    """A private libvirtd for this module; stopped, with every qemu it ran, afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = traversable_dir("imagekit-libvirtd-")
    daemon = start(root)
    try:
        yield daemon
    finally:
        daemon.stop()
        leftover = daemon.members()
        shutil.rmtree(root, ignore_errors=True)
        assert leftover == [], f"processes of the private libvirtd survived: {leftover}"
