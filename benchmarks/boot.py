"""Benchmark ``imagekit boot`` against the same qemu command line run by hand.

Everything is made here, offline: the bootable disk of ``tests/bootdisk.py`` (syslinux, the
host's kernel, a busybox init that reads its NoCloud seed, prints ``bootdisk: ready`` and powers
off) is imported into a store, and ``imagekit seed`` writes the seed both sides attach.

1. imagekit: ``python -m imagekit boot bootdisk:1 --seed SEED --marker 'bootdisk: ready'
   --json`` as a whole process, from start to exit (it exits right after the marker).
2. by hand: the qemu argv that imagekit printed in its JSON (``command``), run directly: the
   overlay imagekit made and removed is made again with ``qemu-img create`` (timed, as a person
   would have to), the forwarded port is a fresh one, and the benchmark reads qemu's serial
   console until the marker, then kills it.

The runs are interleaved and the order rotates, so both see the same noise. The figure is the
ratio of medians, imagekit / by hand; the target is at most 1.1x.

Run from the repository: ``.venv/bin/python benchmarks/boot.py [--runs N] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import log, machine, met, stats, terminate
from common import run as run_grouped

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.1  # imagekit / by hand, at most
MARKER = "bootdisk: ready"
REF = "bootdisk:1"
MEMORY = "256"


def imagekit(*args: str, env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Run the CLI as a whole process in its own group; wall seconds and stdout."""
    done = run_grouped([sys.executable, "-m", "imagekit", *args], env, timeout)
    return done.seconds, done.stdout


def by_hand(argv: list[str], blob: Path, work: Path, timeout: float) -> float:
    """imagekit's qemu argv on a fresh overlay of ``blob``: seconds until the marker."""
    overlay = work / "hand.qcow2"
    overlay.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(blob), str(overlay)],
        check=True,
    )
    proc = subprocess.Popen(
        _retarget(argv, overlay),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_marker(proc, started + timeout)
        return time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _retarget(argv: list[str], overlay: Path) -> list[str]:
    """The same argv with this run's overlay and a free forwarded port."""
    out = []
    for arg in argv:
        if arg.startswith("file=") and "boot.qcow2," in arg:
            arg = f"file={overlay}," + arg.split(",", 1)[1]
        if "hostfwd=tcp:127.0.0.1:" in arg:
            head, _, tail = arg.partition("hostfwd=tcp:127.0.0.1:")
            arg = f"{head}hostfwd=tcp:127.0.0.1:{_free_port()}-{tail.split('-', 1)[1]}"
        out.append(arg)
    return out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_marker(proc: subprocess.Popen[bytes], deadline: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    while (left := deadline - time.perf_counter()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 1 << 16) if ready else b""
        if ready and not chunk:
            raise RuntimeError("qemu exited before the marker")
        seen = (seen + chunk)[-8192:]
        if MARKER.encode() in seen:
            return
    raise RuntimeError(f"no marker within the timeout; console: {seen[-500:]!r}")


@contextlib.contextmanager
def workdir(parent: Path | None) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="ikb-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def benchmark(work: Path, runs: int, timeout: float) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.bootdisk import build_bootdisk  # the test session's disk, made the same way

    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEKIT_")}
    env |= {"TMPDIR": str(work), "IMAGEKIT_HOME": str(work / "store")}
    log("setup: building the bootable disk, importing it, writing the seed")
    disk = build_bootdisk(work / "bootdisk.qcow2")
    imagekit("import", str(disk), "--name", REF, env=env, timeout=timeout)
    seed = work / "seed.iso"
    imagekit("seed", "-o", str(seed), "--hostname", "bench", env=env, timeout=timeout)
    boot = ("boot", REF, "--seed", str(seed), "--marker", MARKER, "--memory", MEMORY, "--json")
    log("warm-up: one untimed imagekit boot (its argv is what the by-hand runs use)")
    _, out = imagekit(*boot, env=env, timeout=timeout)
    report = json.loads(out)
    blob = work / "store" / "blobs" / "sha256" / report["disk"].removeprefix("sha256:")
    by_hand(report["command"], blob, work, timeout)
    ours: list[float] = []
    inside: list[float] = []  # imagekit's own "seconds": qemu start to marker
    theirs: list[float] = []
    for run in range(runs):
        for side in ("imagekit", "hand") if run % 2 == 0 else ("hand", "imagekit"):
            if side == "imagekit":
                seconds, out = imagekit(*boot, env=env, timeout=timeout)
                booted = json.loads(out)
                assert booted["marker"] == MARKER
                ours.append(seconds)
                inside.append(booted["seconds"])
            else:
                theirs.append(by_hand(report["command"], blob, work, timeout))
        log(f"run {run + 1}: imagekit {ours[-1]:.2f} s, by hand {theirs[-1]:.2f} s")
    ratio = stats(ours)["median_s"] / stats(theirs)["median_s"]
    paired = sorted(a / b for a, b in zip(ours, theirs, strict=True))[len(ours) // 2]
    return {
        "machine": machine(),
        "accel": report["accel"],
        "command": report["command"],
        "imagekit": stats(ours),
        "imagekit_qemu_to_marker": stats(inside),
        "by_hand": stats(theirs),
        "ratio": ratio,
        "paired_ratio_median": paired,
        "target": TARGET,
        "met": ratio <= TARGET,
    }


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"imagekit {m['imagekit']} boot benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu']}, {m['platform']}",
        f"python:  {m['python']} ({sys.executable})",
        f"accel:   {results['accel']}; guest: tests/bootdisk.py, {MEMORY} MiB, seed on a CD-ROM",
        "   run   imagekit boot (qemu to marker)   by hand (qemu-img create + qemu)   ratio",
    ]
    ours, theirs = results["imagekit"]["runs_s"], results["by_hand"]["runs_s"]
    inside = results["imagekit_qemu_to_marker"]["runs_s"]
    for run, (a, q, b) in enumerate(zip(ours, inside, theirs, strict=True), 1):
        lines.append(f"   {run:<5} {a:8.2f} s  ({q:5.1f} s)          {b:8.2f} s{a / b:24.2f}x")
    for name, key in (
        ("imagekit", "imagekit"),
        ("  of which qemu to marker", "imagekit_qemu_to_marker"),
        ("by hand ", "by_hand"),
    ):
        s = results[key]
        lines.append(
            f"   {name} median {s['median_s']:.2f} s  (min {s['min_s']:.2f}, max {s['max_s']:.2f})"
        )
    lines.append(
        f"   ratio imagekit/by hand {results['ratio']:.2f}x  (median of paired ratios "
        f"{results['paired_ratio_median']:.2f}x)  target <= {TARGET}x: {met(results['met'])}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run (default 300)")
    parser.add_argument("--work-dir", type=Path, default=None, help="temp dir parent")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.timeout <= 0:
        parser.error("--runs and --timeout must be positive")
    for tool in ("qemu-system-x86_64", "qemu-img", "syslinux", "mcopy", "mkfs.vfat"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (scripts/setup.sh installs it)")
    signal.signal(signal.SIGTERM, terminate)
    with workdir(args.work_dir) as work:
        results = benchmark(work, args.runs, args.timeout)
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
