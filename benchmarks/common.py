"""What every benchmark here shares: logging, medians, target verdicts, machine facts."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress goes to stderr, so stdout stays the report (or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def stats(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "runs_s": samples,
    }


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind through the finally blocks that clean up."""
    raise SystemExit(128 + signum)


def machine() -> dict[str, Any]:
    """The facts that make a figure comparable: when, which CPU, which Python and imagekit."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        version = importlib.metadata.version("imagekit")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "imagekit": version,
    }


@dataclass(frozen=True)
class Done:
    seconds: float
    stdout: str


def run(command: Sequence[str], env: dict[str, str], timeout: float, *, check: bool = True) -> Done:
    """Run ``command`` in its own process group, timed; on timeout or error kill that group.

    virt-customize and imagekit start qemu as a child: killing the group ends the appliance too.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({proc.returncode}):\n"
            + err.decode(errors="replace")[-4000:]
        )
    return Done(elapsed, out.decode(errors="replace"))


@dataclass(frozen=True)
class Figure:
    """One row of a benchmark's summary: a figure, its baseline from the same run, the target.

    ``ratio`` is the median of the paired per-run ratios (figure/baseline), the number a target
    is judged on; ``target`` reads like "<= 0.35x" and ``ok`` says whether it holds (None: a
    reference printed for comparison, with no target of its own).
    """

    name: str
    median_s: float
    baseline: str
    baseline_s: float | None
    ratio: float | None
    target: str
    ok: bool | None
    unit: str = "s"  # of median_s and baseline_s: a figure that is not a time ("MB") says so


def paired_ratio(samples: list[float], baselines: list[float]) -> float:
    """Median of run-by-run ratios: runs that shared the machine's noise are compared."""
    return statistics.median(a / b for a, b in zip(samples, baselines, strict=True))


def summary_table(figures: Sequence[Figure]) -> str:
    """The table every benchmark ends with: figure, baseline in the same run, ratio, target."""
    rows = [("figure", "median", "baseline (same run)", "baseline", "ratio", "target", "")]
    for f in figures:
        rows.append(
            (
                f.name,
                f"{f.median_s:.3f} {f.unit}",
                f.baseline,
                "" if f.baseline_s is None else f"{f.baseline_s:.3f} {f.unit}",
                "" if f.ratio is None else f"{f.ratio:.2f}x",
                f.target,
                "" if f.ok is None else met(f.ok),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
