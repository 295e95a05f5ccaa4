"""Thin layers: what a layer stores against what its step changed, and reads through a chain.

1. **Chain read.** A base qcow2 of ``--size-mb`` MiB of random data gets five layers of qemu-io
   writes (metadata-like 1-4 KiB records in a few places, file-like 1 MiB runs, half of them
   compressible), made the way a step makes its layer (``qemu_img.create_overlay``, writes,
   ``qemu_img.compact_layer``), and the same five as plain 64 KiB overlays, the format before
   thin layers; and five empty thin layers, which cost a chain's opening and nothing else.
   Each chain's top and the flattened image (``qemu-img convert -O qcow2``) are read whole by
   ``qemu-img convert -n`` into qemu's ``null-co`` driver, written nowhere, in two ways: as
   export reads (``qemu_img.read_options``: every level through io_uring) and as export read
   before (``-f qcow2``, qemu's thread pool). One untimed read of each warms the page cache; the
   timed reads are interleaved with the order rotating. Target: thin chain / flattened <= 1.2x,
   both read as export reads.
2. **Layer bytes.** Each synthetic thin layer against what it changed (tests/layerbytes.py:
   512-byte sectors that differ from the parent and hold data), and one real imagekit step (the
   ten operations of benchmarks/customize.py on tests/guestimage.py's busybox guest, one launch)
   in each format: thin, and the 64 KiB overlay committed as is (``create_overlay``'s old
   options, no compaction, patched in this process only). Target: layer / changed <= 1.1x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, Figure, log, machine, paired_ratio, summary_table, terminate

sys.path.insert(0, str(REPO))

from imagekit.disk import qemu_img
from tests.layerbytes import (
    TEN_OPERATIONS,
    Write,
    chain_changes,
    changed_bytes,
    metadata_like,
    write_with_qemu_io,
)

LAYERS = 5
TODAY = "cluster_size=65536"  # a plain overlay, as create_overlay made it before thin layers
median = statistics.median


SHAPES = {  # records of 1-4 KiB in how many places, 1 MiB files (every other one random)
    "config": (40, 8, 0),  # a step that edits files and accounts: compressed (< 1 MiB)
    "files": (300, 16, 8),  # a step that adds files: ~7 MiB, stored uncompressed
}


def step_writes(seed: int, disk_size: int, shape: str) -> list[Write]:
    """One synthetic step of ``shape``, every write on a 4 KiB boundary as a filesystem's."""
    records, spots, files = SHAPES[shape]
    rng = random.Random(seed)
    places = [rng.randrange(0, disk_size - (1 << 20), 4096) for _ in range(spots)]
    writes = []
    for _ in range(records):
        size = rng.choice((1024, 2048, 4096))
        offset = rng.choice(places) + rng.randrange(0, (1 << 20) - 4096, 4096)
        writes.append(Write(offset, metadata_like(rng, size)))
    for number in range(files):
        offset = rng.randrange(0, disk_size - (1 << 20), 4096)
        data = rng.randbytes(1 << 20) if number % 2 else metadata_like(rng, 1 << 20)
        writes.append(Write(offset, data))
    return writes


def make_base(directory: Path, size_mb: int) -> Path:
    raw, base = directory / "base.raw", directory / "base.qcow2"
    rng = random.Random(0)
    with raw.open("wb") as f:
        for _ in range(size_mb):
            f.write(rng.randbytes(1 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base], check=True)
    raw.unlink()
    return base


def make_chain(directory: Path, base: Path, thin: bool, disk_size: int, shape: str) -> list[Path]:
    """Five layers on ``base`` in ``directory``, each naming its parent plainly (as stored)."""
    directory.mkdir()
    os.link(base, directory / base.name)
    chain, parent = [], base.name
    for number in range(1, LAYERS + 1):
        layer = directory / f"layer{number}.qcow2"
        overlay = directory / f"overlay{number}.qcow2" if thin else layer
        if thin:
            qemu_img.create_overlay(overlay, parent, "qcow2")
        else:
            create = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", TODAY, "-F", "qcow2"]
            subprocess.run([*create, "-b", parent, overlay], check=True)
        write_with_qemu_io(overlay, step_writes(number, disk_size, shape))
        if thin:
            qemu_img.compact_layer(overlay, layer, parent, "qcow2")
            overlay.unlink()
        chain.append(layer)
        parent = layer.name
    return chain


@dataclass(frozen=True)
class Read:
    wall: float
    cpu: float  # qemu-img's user + system time: steadier than wall time on a loaded host


READS = ("io_uring", "before")  # as export reads a chain now; as it did (-f, the thread pool)


def read_whole(disk: Path, size: int, how: str) -> Read:
    """Read every guest byte of ``disk`` through its chain into null-co, ``how`` export does."""
    target = ["--target-image-opts", f"driver=null-co,size={size}"]
    options = qemu_img.read_options(disk, "qcow2") if how == "io_uring" else None
    source = ["--image-opts", options] if options else ["-f", "qcow2", str(disk)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-n", *source, *target], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Read(wall, cpu)


def extents(disk: Path) -> int:
    """Extents of ``disk``'s whole chain as qemu-img map lists them: each is its own read."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(json.loads(out))


def empty_chain(directory: Path, base: Path) -> Path:
    """Five thin layers that hold nothing: a chain's opening cost alone."""
    directory.mkdir()
    os.link(base, directory / base.name)
    parent = base.name
    for number in range(1, LAYERS + 1):
        qemu_img.create_overlay(directory / f"overlay{number}.qcow2", parent, "qcow2")
        layer = directory / f"layer{number}.qcow2"
        qemu_img.compact_layer(directory / f"overlay{number}.qcow2", layer, parent, "qcow2")
        parent = layer.name
    return directory / parent


def chain_reads(work: Path, size_mb: int, runs: int) -> dict[str, Any]:
    base = make_base(work, size_mb)
    size = size_mb << 20
    disks: dict[str, Path] = {"base": base, "empty thin": empty_chain(work / "empty", base)}
    layers: dict[str, list[dict[str, int]]] = {}
    same = True
    for shape in SHAPES:
        log(f"chain read: {LAYERS} {shape} layers, thin and as plain 64 KiB overlays")
        thin = make_chain(work / f"{shape}-thin", base, True, size, shape)
        today = make_chain(work / f"{shape}-today", base, False, size, shape)
        flat = work / f"{shape}-flat.qcow2"
        convert = ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2"]
        subprocess.run([*convert, str(thin[-1]), str(flat)], check=True)
        compare = ["qemu-img", "compare", "-q", str(thin[-1]), str(today[-1])]
        same = same and subprocess.run(compare).returncode == 0
        disks |= {f"{shape} flat": flat, f"{shape} thin": thin[-1], f"{shape} 64K": today[-1]}
        layers[shape] = [
            {"thin": new.stat().st_size, "today": old.stat().st_size, "changed": c.data}
            for new, old, c in zip(thin, today, chain_changes(base, thin), strict=True)
        ]
    for disk in disks.values():
        read_whole(disk, size, "before")  # warm the page cache
    reads: dict[str, list[Read]] = {f"{name}, {how}": [] for how in READS for name in disks}
    names = list(reads)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            which, how = name.rsplit(", ", 1)
            reads[name].append(read_whole(disks[which], size, how))
        shown = [n for n in names if " thin, " in n]
        log(f"  run {run + 1} (cpu): " + ", ".join(f"{n} {reads[n][-1].cpu:.3f} s" for n in shown))
    return {
        "same_content": same,
        "extents": {name: extents(disk) for name, disk in disks.items()},
        "wall": {name: [r.wall for r in samples] for name, samples in reads.items()},
        "cpu": {name: [r.cpu for r in samples] for name, samples in reads.items()},
        "layers": layers,
    }


@contextlib.contextmanager
def todays_layers() -> Iterator[None]:
    """A step's layer as before: a plain 64 KiB overlay, committed without compaction."""
    options, compact = qemu_img.OVERLAY_OPTIONS, qemu_img.compact_layer
    qemu_img.OVERLAY_OPTIONS = TODAY
    qemu_img.compact_layer = lambda overlay, layer, backing, fmt: shutil.copyfile(overlay, layer)  # type: ignore[assignment]
    try:
        yield
    finally:
        qemu_img.OVERLAY_OPTIONS, qemu_img.compact_layer = options, compact


def real_step(work: Path) -> dict[str, Any]:
    """The ten operations as one step in each format, on the same scratch busybox base."""
    from imagekit.recipe import ScratchSource
    from imagekit.sources.scratch import make_scratch_disk
    from imagekit.store import Store
    from tests.guestimage import SIZE, build_guest_tree

    build_guest_tree(work / "tree")
    disk = work / "guest.qcow2"
    log("real step: the busybox base (one launch)")
    make_scratch_disk(ScratchSource(size=SIZE, content=work / "tree"), disk)
    out: dict[str, Any] = {}
    for name in ("thin", "today"):
        store = Store(work / f"store-{name}")
        store.import_file(disk, "guest:1", disk_format="qcow2")
        log(f"real step: the ten operations, {name} layer format (one launch)")
        with todays_layers() if name == "today" else contextlib.nullcontext():
            started = time.perf_counter()
            image = store.customize("guest:1", TEN_OPERATIONS, tag="guest:step").image
            seconds = time.perf_counter() - started
        base, layer = (store.blob_path(d.digest) for d in image.disks)
        changed = changed_bytes(layer, base)
        out[name] = {
            "layer": layer.stat().st_size,
            "changed": changed.data,
            "zeroed": changed.zeroed,
            "mapped": changed.mapped,
            "step_s": seconds,
        }
    return out


def figures(r: dict[str, Any]) -> list[Figure]:
    rows = []
    for clock in ("wall", "cpu"):  # qemu-img's CPU time: the steadier figure on a loaded host
        times = r["chain"][clock]
        for how in READS:
            kinds = (("thin", "<= 1.2x"), ("64K", "reference"))
            for shape, kind, target in [(s, k, t) for s in SHAPES for k, t in kinds]:
                if how == "before" and kind == "64K":
                    continue  # the format and the read before: in the table above
                flat, samples = times[f"{shape} flat, {how}"], times[f"{shape} {kind}, {how}"]
                ratio = paired_ratio(samples, flat)
                ok = ratio <= 1.2 if kind == "thin" and how == "io_uring" else None
                target = target if how == "io_uring" else "reference"
                name = f"read {LAYERS} {shape}, {kind}, {how} ({clock})"
                rows.append(
                    Figure(name, median(samples), "flattened", median(flat), ratio, target, ok)
                )
            base, empty = times[f"base, {how}"], times[f"empty thin, {how}"]
            name = f"read {LAYERS} empty, thin, {how} ({clock})"
            ratio = paired_ratio(empty, base)
            rows.append(Figure(name, median(empty), "base", median(base), ratio, "reference", None))
    for shape, layers in r["chain"]["layers"].items():
        changed = sum(x["changed"] for x in layers)
        for kind, target in (("thin", "<= 1.1x"), ("today", "reference")):
            stored = sum(x[kind] for x in layers)
            ok = stored / changed <= 1.1 if kind == "thin" else None
            label = "thin" if kind == "thin" else "64K"
            name = f"{shape} layers, {label} (sum of {LAYERS})"
            rows.append(
                Figure(
                    name, stored / 1e6, "changed", changed / 1e6, stored / changed, target, ok, "MB"
                )
            )
    for kind, target in (("thin", "<= 1.1x"), ("today", "reference")):
        step = r.get("step", {}).get(kind)
        if step:
            ratio = step["layer"] / step["changed"]
            ok = ratio <= 1.1 if kind == "thin" else None
            name = "real 10-op step, " + ("thin" if kind == "thin" else "64K")
            rows.append(
                Figure(
                    name,
                    step["layer"] / 1e6,
                    "changed",
                    step["changed"] / 1e6,
                    ratio,
                    target,
                    ok,
                    "MB",
                )
            )
    return rows


def report(r: dict[str, Any]) -> str:
    m, chain = r["machine"], r["chain"]
    lines = [
        f"imagekit {m['imagekit']} layers benchmark, {m['date']}",
        f"machine: nproc {m['nproc']}, {m['cpu']}, load average {r['load'][0]} at the start, "
        f"{r['load'][1]} at the end",
        f"tools:   {r['qemu_img']}",
        f"base:    {r['size_mb']} MiB of random data, qcow2 64 KiB clusters; per layer: "
        + "; ".join(
            f"{shape} = {n} records (1-4 KiB) in {p} places + {f} x 1 MiB files"
            for shape, (n, p, f) in SHAPES.items()
        ),
        f"runs:    {r['runs']} interleaved reads per disk and way after one warm-up each; "
        f"thin and 64 KiB chains read the same content: {chain['same_content']}",
        "",
        "shape   layer   thin bytes   64K bytes    changed   thin/changed  64K/changed",
    ]
    for shape, layers in chain["layers"].items():
        for number, x in enumerate(layers, 1):
            lines.append(
                f"{shape:<7} {number:>5}  {x['thin']:>11,}  {x['today']:>10,}  "
                f"{x['changed']:>9,}  {x['thin'] / x['changed']:>11.2f}x  "
                f"{x['today'] / x['changed']:>10.2f}x"
            )
    lines.append("")
    lines.append(
        "read (whole disk)       extents  wall median (min-max)    cpu median  cpu vs flat"
    )
    for name, samples in chain["wall"].items():
        disk, how = name.rsplit(", ", 1)
        shape = disk.split()[0]
        flat = "base" if shape in ("base", "empty") else f"{shape} flat"
        cpu, flat_cpu = chain["cpu"][name], chain["cpu"][f"{flat}, {how}"]
        lines.append(
            f"{name:<24} {chain['extents'][disk]:>6}  {median(samples):.3f} s "
            f"({min(samples):.3f}-{max(samples):.3f})  {median(cpu):.3f} s     "
            f"{paired_ratio(cpu, flat_cpu):.2f}x"
        )
    for name, step in r.get("step", {}).items():
        lines.append(
            f"real step ({name}): layer {step['layer']:,} bytes, changed {step['changed']:,} "
            f"(+{step['zeroed']:,} zeroed; {step['mapped']:,} mapped), step {step['step_s']:.1f} s"
        )
    return "\n".join([*lines, "", summary_table(figures(r))])


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="timed reads per disk (default 7)")
    parser.add_argument("--size-mb", type=int, default=300, help="MiB of random base data")
    parser.add_argument("--no-step", action="store_true", help="skip the real step (2 launches)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temp dir goes")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5 (targets are judged on medians of >= 5)")
    signal.signal(signal.SIGTERM, terminate)
    version = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    r: dict[str, Any] = {"machine": machine(), "runs": args.runs, "size_mb": args.size_mb}
    r["qemu_img"] = version.splitlines()[0]
    start_load = _loadavg()
    work = Path(tempfile.mkdtemp(prefix="ikl-", dir=args.work_dir))
    try:
        (work / "chain").mkdir()
        r["chain"] = chain_reads(work / "chain", args.size_mb, args.runs)
        if not args.no_step:
            (work / "step").mkdir()
            r["step"] = real_step(work / "step")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r["load"] = (start_load, _loadavg())
    if args.json:
        print(json.dumps({**r, "summary": [f.__dict__ for f in figures(r)]}, indent=2))
    else:
        print(report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
