"""Run an installer VM to its end under supervision, and make sure qemu never outlives us.

An unattended install has three ways to go wrong that a plain ``subprocess.run`` would turn into
a hang: the installer stops at a prompt, crashes into a traceback screen, or wedges. So the
serial console is streamed to a log and a progress line, known failure markers end the run at
once, and two clocks run: a hard timeout, and an inactivity watchdog that fires only when the
console is silent *and* the target disk stops changing (package installs are often quiet for
minutes while writing gigabytes; watchdogs that fire on silence alone kill good installs).
qemu runs in its own process group, killed on every exit path, and dies with us (pdeathsig).
"""

from __future__ import annotations

import http.server
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from imagekit import config
from imagekit.errors import CustomizeError
from imagekit.guest import appliance
from imagekit.progress import ProgressCallback, ProgressEvent

HOST_FROM_GUEST = "10.0.2.2"  # the host's loopback as qemu user networking shows it to a guest
FAILURE_MARKERS = (
    "Traceback (most recent call last)",
    "kickstart error",
    "An unknown error has occurred",
    "Pane is dead",
)
TAIL_LINES = 30
POLL_SECONDS = 1.0
MARKER_GRACE = 3.0  # seconds of console kept after a failure marker: the message that follows

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class VM:
    """One installer boot: direct kernel boot from the ISO's files, the ISO as a CD-ROM."""

    kernel: Path
    initrd: Path
    iso: Path
    disk: Path
    memory_mib: int
    vcpus: int
    kernel_args: tuple[str, ...]
    timeout: float
    inactivity: float
    log: Path
    oemdrv: Path | None = None

    def with_delivery(self, kernel_args: tuple[str, ...], oemdrv: Path | None) -> VM:
        return replace(self, kernel_args=(*self.kernel_args, *kernel_args), oemdrv=oemdrv)


@dataclass(frozen=True)
class Ran:
    """What the provenance records about a finished install."""

    command: list[str]
    accel: str
    seconds: float


def command(vm: VM, accel: str) -> list[str]:
    """The qemu command line: nothing on it depends on the host but ``accel`` and paths."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise CustomizeError("qemu-system-x86_64 is not installed; install qemu-system-x86")
    cpu = "host" if accel == "kvm" else "max"
    args = [qemu, "-accel", accel, "-machine", "pc", "-cpu", cpu]
    args += ["-m", str(vm.memory_mib), "-smp", str(vm.vcpus), "-nodefaults", "-no-reboot"]
    args += ["-display", "none", "-monitor", "none", "-serial", "stdio"]
    args += ["-kernel", str(vm.kernel), "-initrd", str(vm.initrd)]
    args += ["-append", " ".join(["console=ttyS0", *vm.kernel_args])]
    args += ["-drive", f"file={vm.disk},format=qcow2,if=virtio,cache=unsafe,discard=unmap"]
    for index, cdrom in enumerate(p for p in (vm.iso, vm.oemdrv) if p is not None):
        args += ["-drive", f"file={cdrom},format=raw,media=cdrom,readonly=on,if=ide,index={index}"]
    args += ["-nic", "user,model=virtio-net-pci"]
    args += ["-object", "rng-random,filename=/dev/urandom,id=rng0"]
    return [*args, "-device", "virtio-rng-pci,rng=rng0"]


def run(vm: VM, *, progress: ProgressCallback) -> Ran:
    """Boot ``vm`` and supervise it until qemu exits; CustomizeError if the install fails."""
    accel = appliance.accel()
    argv = command(vm, accel)
    # setpriv --pdeathsig: the kernel kills qemu if we die, even by SIGKILL; no preexec_fn,
    # which is unsafe while the kickstart server thread runs.
    launcher = shutil.which("setpriv")
    wrapped = [launcher, "--pdeathsig", "KILL", "--", *argv] if launcher else argv
    # The "boot" event is how callers (and tests) count VMs started: a cache hit starts none.
    progress(ProgressEvent("boot", f"booting the installer ({accel}); console: {vm.log}"))
    started = time.monotonic()
    with vm.log.open("wb") as log:
        process = subprocess.Popen(
            wrapped,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        try:
            _supervise(process, vm, log, progress)
        finally:
            _kill(process)
    if process.returncode != 0:
        raise CustomizeError(
            f"qemu exited with status {process.returncode}: {_tail(vm.log)}\n"
            f"(full console log: {vm.log})"
        )
    return Ran(argv, accel, round(time.monotonic() - started, 1))


def _supervise(
    process: subprocess.Popen[bytes], vm: VM, log: IO[bytes], progress: ProgressCallback
) -> None:
    """Copy the console to the log until qemu exits; raise on a marker or a watchdog."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    started = last_activity = time.monotonic()
    disk_state = _disk_state(vm.disk)
    pending = b""
    recent: deque[str] = deque(maxlen=4)
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        chunk = os.read(fd, 1 << 16) if ready else b""
        now = time.monotonic()
        if chunk:
            log.write(chunk)
            log.flush()
            last_activity = now
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[-4096:]  # a console that never ends a line stays bounded
            for raw in lines:
                line = _ANSI.sub("", raw.decode("utf-8", "replace")).strip()
                if line:
                    progress(ProgressEvent("install", line[:200]))
                recent.append(line)
            tail = _ANSI.sub("", pending.decode("utf-8", "replace"))
            if marker := _marker("\n".join([*recent, tail])):
                _drain(fd, log, MARKER_GRACE)
                raise _failure(f"the installer failed ({marker!r} on its console)", vm)
        elif ready:  # EOF: qemu closed the console, so it is exiting
            process.wait()
            return
        state = _disk_state(vm.disk)
        if state != disk_state:
            disk_state, last_activity = state, now
        if now - started > vm.timeout:
            raise _failure(f"the install did not finish within {vm.timeout:g} s (timeout)", vm)
        if now - last_activity > vm.inactivity:
            raise _failure(
                f"no console output and no disk writes for {vm.inactivity:g} s (inactivity): "
                "the installer is stuck or waiting for input",
                vm,
            )


def _marker(text: str) -> str | None:
    return next((marker for marker in FAILURE_MARKERS if marker in text), None)


def _drain(fd: int, log: IO[bytes], seconds: float) -> None:
    """Keep copying the console for a moment, so the log has the whole failure message."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 1 << 16) if ready else b""
        if not chunk:
            break
        log.write(chunk)
    log.flush()


def _failure(reason: str, vm: VM) -> CustomizeError:
    return CustomizeError(
        f"{reason}; console tail:\n{_tail(vm.log)}\n(full console log: {vm.log}; set "
        f"{config.ACCEL_ENV}=tcg or kvm to choose the accelerator)"
    )


def _tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return "(no console log)"
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    return "\n".join([line for line in lines if line.strip()][-TAIL_LINES:]) or "(console empty)"


def _disk_state(path: Path) -> tuple[int, int]:
    """Size and mtime of the target disk: any write the guest makes changes one of them."""
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_size, info.st_mtime_ns)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """End qemu's whole process group: politely, then for sure; then reap it."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def serve_kickstart(kickstart: str) -> Iterator[int]:
    """Serve ``/ks.cfg`` on an ephemeral 127.0.0.1 port for the life of the install."""
    body = kickstart.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/ks.cfg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the installer's console is the log that matters."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
