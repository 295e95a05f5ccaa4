"""What every benchmark here shares: logging, medians, target verdicts, machine facts."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
from pathlib import Path
from types import FrameType
from typing import Any


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
