"""Run a VM to its end under supervision, and make sure qemu never outlives us.

Two callers boot VMs: the kickstart installer (a build step) and the boot check (does a stored
image come up?). Both share this supervisor. A plain ``subprocess.run`` would turn a stuck guest
into a hang, so the serial console is streamed to a log and to progress lines, console markers
end the run at once (failure markers such as an installer traceback; readiness markers such as
a login prompt), and two clocks run: a hard timeout, and an inactivity watchdog that fires only
when the console is silent *and* the disk stops changing (package installs are often quiet for
minutes while writing gigabytes; watchdogs that fire on silence alone kill good installs).
qemu runs in its own process group, killed on every exit path, and dies with us (pdeathsig).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from imagekit import config
from imagekit.errors import CustomizeError, ImagekitError
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
class Watch:
    """How one run is watched, and what ends it before qemu exits by itself.

    ``what`` names the VM in messages ("the installer"). ``ready`` patterns and ``probe`` (polled
    every second, from the supervising thread; it must not block) end the run as a success;
    when either is set, a guest that powers off first has failed. ``attach`` puts the console on
    our own terminal instead of the log: nothing is watched then but qemu's exit.
    """

    log: Path
    timeout: float
    what: str
    inactivity: float | None = None
    disk: Path | None = None  # writes to it count as activity for the inactivity watchdog
    failures: tuple[str, ...] = ()
    ready: tuple[re.Pattern[str], ...] = ()
    probe: Callable[[], str | None] | None = None
    stage: str = "console"  # the progress stage of console lines
    error: type[ImagekitError] = CustomizeError
    attach: bool = False


@dataclass(frozen=True)
class Ran:
    """What the caller records about a finished run; ``ready`` is the marker that ended it."""

    command: list[str]
    accel: str
    seconds: float
    ready: str | None = None


def qemu_binary() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise CustomizeError("qemu-system-x86_64 is not installed; install qemu-system-x86")
    return qemu


def machine_args(accel: str, memory_mib: int, vcpus: int, machine: str = "pc") -> list[str]:
    """The start every supervised VM shares: no default devices, no display, no reboot."""
    cpu = "host" if accel == "kvm" else "max"
    args = [qemu_binary(), "-accel", accel, "-machine", machine, "-cpu", cpu]
    return [*args, "-m", str(memory_mib), "-smp", str(vcpus), "-nodefaults", "-no-reboot"]


def rng_args() -> list[str]:
    """A virtio RNG fed from the host, so a guest never stalls at boot waiting for entropy."""
    return [
        "-object",
        "rng-random,filename=/dev/urandom,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]


def command(vm: VM, accel: str) -> list[str]:
    """The installer's qemu command line: nothing on it depends on the host but ``accel``."""
    args = machine_args(accel, vm.memory_mib, vm.vcpus)
    args += ["-display", "none", "-monitor", "none", "-serial", "stdio"]
    args += ["-kernel", str(vm.kernel), "-initrd", str(vm.initrd)]
    args += ["-append", " ".join(["console=ttyS0", *vm.kernel_args])]
    args += ["-drive", f"file={vm.disk},format=qcow2,if=virtio,cache=unsafe,discard=unmap"]
    for index, cdrom in enumerate(p for p in (vm.iso, vm.oemdrv) if p is not None):
        args += ["-drive", f"file={cdrom},format=raw,media=cdrom,readonly=on,if=ide,index={index}"]
    args += ["-nic", "user,model=virtio-net-pci"]
    return [*args, *rng_args()]


def run(vm: VM, *, progress: ProgressCallback) -> Ran:
    """Boot the installer ``vm`` and supervise it until qemu exits; CustomizeError if it fails."""
    accel = appliance.accel()
    watch = Watch(
        log=vm.log,
        timeout=vm.timeout,
        what="the installer",
        inactivity=vm.inactivity,
        disk=vm.disk,
        failures=FAILURE_MARKERS,
        stage="install",
    )
    announce = f"booting the installer ({accel}); console: {vm.log}"
    return supervise(command(vm, accel), accel, watch, progress=progress, announce=announce)


def supervise(
    argv: list[str], accel: str, watch: Watch, *, progress: ProgressCallback, announce: str
) -> Ran:
    """Run ``argv`` (a qemu whose serial console is its stdout) to its end under ``watch``."""
    # setpriv --pdeathsig: the kernel kills qemu if we die, even by SIGKILL; no preexec_fn,
    # which is unsafe while server threads run.
    launcher = shutil.which("setpriv")
    wrapped = [launcher, "--pdeathsig", "KILL", "--", *argv] if launcher else argv
    # The "boot" event is how callers (and tests) count VMs started: a cache hit starts none.
    progress(ProgressEvent("boot", announce))
    started = time.monotonic()
    ready = None
    with watch.log.open("wb") as log:
        attached = None if watch.attach else subprocess.PIPE
        process = subprocess.Popen(
            wrapped,
            stdin=None if watch.attach else subprocess.DEVNULL,
            stdout=attached,
            stderr=log,
            start_new_session=True,
        )
        try:
            if watch.attach:
                process.wait()
            else:
                ready = _supervise(process, watch, log, progress)
        finally:
            _kill(process)
    if ready is None and process.returncode != 0:
        raise watch.error(
            f"qemu exited with status {process.returncode}: {_tail(watch.log)}\n"
            f"(full console log: {watch.log})"
        )
    if ready is None and (watch.ready or watch.probe) and not watch.attach:
        raise _failure(f"{watch.what} powered off before it was ready", watch)
    return Ran(argv, accel, round(time.monotonic() - started, 1), ready)


def _supervise(
    process: subprocess.Popen[bytes], watch: Watch, log: IO[bytes], progress: ProgressCallback
) -> str | None:
    """Copy the console to the log until qemu exits or a marker is seen; raise on failure."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    started = last_activity = time.monotonic()
    disk_state = _disk_state(watch.disk)
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
                    progress(ProgressEvent(watch.stage, line[:200]))
                recent.append(line)
            text = "\n".join([*recent, _ANSI.sub("", pending.decode("utf-8", "replace"))])
            if marker := _failure_marker(text, watch.failures):
                _drain(fd, log, MARKER_GRACE)
                raise _failure(f"{watch.what} failed ({marker!r} on its console)", watch)
            if seen := _ready_marker(text, watch.ready):
                return seen
        elif ready:  # EOF: qemu closed the console, so it is exiting
            process.wait()
            return None
        if watch.probe is not None and (answer := watch.probe()) is not None:
            return answer
        state = _disk_state(watch.disk)
        if state != disk_state:
            disk_state, last_activity = state, now
        _check_clocks(watch, now - started, now - last_activity)


def _check_clocks(watch: Watch, running: float, idle: float) -> None:
    if running > watch.timeout:
        raise _failure(f"{watch.what} did not finish within {watch.timeout:g} s (timeout)", watch)
    if watch.inactivity is not None and idle > watch.inactivity:
        raise _failure(
            f"no console output and no disk writes for {watch.inactivity:g} s (inactivity): "
            f"{watch.what} is stuck or waiting for input",
            watch,
        )


def _failure_marker(text: str, markers: tuple[str, ...]) -> str | None:
    return next((marker for marker in markers if marker in text), None)


def _ready_marker(text: str, patterns: tuple[re.Pattern[str], ...]) -> str | None:
    for pattern in patterns:
        if found := pattern.search(text):
            return found[0].strip()
    return None


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


def _failure(reason: str, watch: Watch) -> ImagekitError:
    return watch.error(
        f"{reason}; console tail:\n{_tail(watch.log)}\n(full console log: {watch.log}; set "
        f"{config.ACCEL_ENV}=tcg or kvm to choose the accelerator)"
    )


def _tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return "(no console log)"
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    return "\n".join([line for line in lines if line.strip()][-TAIL_LINES:]) or "(console empty)"


def _disk_state(path: Path | None) -> tuple[int, int]:
    """Size and mtime of the target disk: any write the guest makes changes one of them."""
    try:
        info = path.stat() if path is not None else None
    except OSError:
        return (0, 0)
    return (info.st_size, info.st_mtime_ns) if info is not None else (0, 0)


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
    with serve_files({"ks.cfg": kickstart.encode()}) as port:
        yield port


@contextmanager
def serve_files(files: Mapping[str, bytes]) -> Iterator[int]:
    """Serve ``files`` (name -> bytes) at ``/NAME`` on an ephemeral 127.0.0.1 port, GET only.

    The guest reaches it as ``http://10.0.2.2:PORT/`` through qemu's user networking; nothing
    beyond this host's loopback can.
    """
    import http.server

    bodies = dict(files)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path.split("?")[0].lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the guest's console is the log that matters."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
