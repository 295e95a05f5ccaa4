"""Benchmark the store at scale: the commands a nightly job runs, with 1,000 and 10,000 refs.

A store is built through the Python API, as ``Store.import_file`` writes an image (a raw disk
blob, a provenance config, a manifest annotated with its creation time, a tag) but without
running qemu-img per image: ``--refs`` images of 8 KiB each, ten tags per name (``nNNNN:T``),
three blobs each (30,000 blobs for 10,000 refs). One real pulled image (a recipe served on
loopback by benchmarks/pull.py's mirror) makes the warm pull a true cache hit.

Each figure is the median of ``--runs`` whole processes (``python -m imagekit ...``, start-up
included; the code byte-compiled first), on each store size:

  start     ``imagekit --help``: process start-up, the floor under every whole-process figure
  images    ``imagekit images`` (the table, to a pipe)
  pull      ``imagekit pull RECIPE --json``: the warm pull, a cache hit
  inspect   ``imagekit inspect nNNNN:T --json``
  tag       one ``Store.tag`` through the API, in process (the CLI has no tag command)
  fsck      ``imagekit fsck --json`` (rehashes every blob: it grows with the bytes stored)
  gc-0      ``imagekit gc --json`` with nothing to remove (after the round's tag: a moved ref)
  gc-10     ``imagekit gc --json`` after ten images were untagged (30 blobs to remove)
  import    ``imagekit import DISK --name ...``: one more image
  */api     images, inspect and gc-0 through the API in this process, on a fresh Store (gc-0/api
            after the round's import: a new ref to mark, new blobs to list)

Targets at 10,000 refs: images < 1 s, warm pull and inspect < 0.3 s, a tag < 0.1 s, and gc
growing with what it removes rather than with the store: gc-0 at 10k within 1.5x of gc-0 at 1k
(the baseline in the same run) and gc-10 within 0.2 s of gc-0.

Run from the repository:
``.venv/bin/python benchmarks/scale.py [--runs 5] [--sizes 1000,10000] [--work DIR] [--json]``.
A ``--work`` directory keeps the built stores for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import Figure, log, machine, paired_ratio, run, stats, summary_table, terminate
from pull import mirror, publish, write_recipe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagekit import provenance  # noqa: E402
from imagekit.oci.media import CREATED_ANNOTATION, MEDIA_DISK_RAW  # noqa: E402
from imagekit.store import Store  # noqa: E402

TAGS_PER_NAME = 10
DISK_BYTES = 8 << 10
TARGETS = {"images": 1.0, "pull": 0.3, "inspect": 0.3, "tag": 0.1}
GC_GROWTH = 1.5  # gc-0 at the largest size / gc-0 at the smallest, at most
GC_PER_REMOVED = 0.2  # seconds gc-10 may take beyond gc-0


def ref_of(number: int) -> str:
    return f"n{number // TAGS_PER_NAME:04d}:{number % TAGS_PER_NAME}"


def add_image(store: Store, number: int, rng: random.Random, *, tag: bool = True) -> str:
    """One image as an import writes it: raw disk, provenance config, manifest; then the tag."""
    disk = store.add_bytes(rng.randbytes(DISK_BYTES), MEDIA_DISK_RAW)
    name, _, version = ref_of(number).partition(":")
    config = {
        **provenance.base_config(name, version, None),
        "source": {"kind": "local", "path": f"/srv/images/{name}-{version}.raw"},
        "verification": provenance.unverified_record(),
        "disk": provenance.disk_record(disk, {"format": "raw", "virtual-size": DISK_BYTES}),
    }
    manifest = store.write_manifest(config, [disk], {CREATED_ANNOTATION: config["created"]})
    if tag:
        store.tag(ref_of(number), manifest)
    return manifest.digest


def build_store(root: Path, refs: int) -> Store:
    """A store of ``refs`` tagged images (kept across runs under --work)."""
    done = root / "built"
    store = Store(root)
    if done.exists():
        log(f"store of {refs} refs: reused {root}")
        return store
    rng = random.Random(refs)
    start = time.perf_counter()
    for number in range(refs):
        add_image(store, number, rng)
        if number and number % 1000 == 0:
            log(f"  {number}/{refs} images, {time.perf_counter() - start:.0f} s")
    done.write_text(f"{refs}\n")
    log(f"store of {refs} refs built in {time.perf_counter() - start:.1f} s")
    return store


class Commands:
    """The measured commands on one store, with a clean environment."""

    def __init__(self, store: Store, recipe: Path, disk: Path, timeout: float) -> None:
        self.store = store
        self.recipe = recipe
        self.disk = disk
        self.timeout = timeout
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IMAGEKIT_") and not k.lower().endswith("_proxy")
        }
        self.cli = [sys.executable, "-m", "imagekit"]
        self.imports = 0
        self.rng = random.Random(7)

    def imagekit(self, *args: str) -> float:
        command = [*self.cli, args[0], "--store", str(self.store.root), *args[1:]]
        return run(command, self.env, self.timeout).seconds

    def pull(self) -> float:
        command = [*self.cli, "pull", str(self.recipe), "--store", str(self.store.root), "--json"]
        done = run(command, self.env, self.timeout)
        if json.loads(done.stdout).get("cached") is not True:
            raise RuntimeError("the warm pull was not a cache hit")
        return done.seconds

    def tag(self) -> float:
        target = self.store.resolve(ref_of(0))
        start = time.perf_counter()
        self.store.tag("bench:tagged", target)
        return time.perf_counter() - start

    def gc_removing(self, count: int) -> float:
        """gc after ``count`` new images were written untagged (3 blobs each to remove)."""
        for _ in range(count):
            add_image(self.store, 0, self.rng, tag=False)
        command = [*self.cli, "gc", "--store", str(self.store.root), "--json"]
        done = run(command, self.env, self.timeout)
        removed = len(json.loads(done.stdout)["removed_blobs"])
        if removed != 3 * count:
            raise RuntimeError(f"gc removed {removed} blobs, not {3 * count}")
        return done.seconds

    def import_one(self) -> float:
        self.imports += 1
        name = f"bench:import-{os.getpid()}-{self.imports}"  # new in a reused store too
        return self.imagekit("import", str(self.disk), "--format", "raw", "--name", name)

    def measured(self) -> dict[str, Callable[[], float]]:
        some = ref_of(len(self.store.refs()) // 2)
        return {
            "start": lambda: run([*self.cli, "--help"], self.env, self.timeout).seconds,
            "images": lambda: self.imagekit("images"),
            "pull": self.pull,
            "inspect": lambda: self.imagekit("inspect", some, "--json"),
            "tag": self.tag,
            "fsck": lambda: self.imagekit("fsck", "--json"),
            "gc-0": lambda: self.gc_removing(0),
            "gc-10": lambda: self.gc_removing(10),
            "import": self.import_one,
            # The same work in this process, on a fresh Store: what grows with the store, without
            # the interpreter's start-up (which dominates the figures above on a loaded machine).
            "images/api": lambda: self.in_process(lambda store: store.summaries()),
            "inspect/api": lambda: self.in_process(
                lambda store: (store.image(some), store.signatures(some))
            ),
            "gc-0/api": lambda: self.in_process(lambda store: store.gc()),
        }

    def in_process(self, work: Callable[[Store], object]) -> float:
        start = time.perf_counter()
        work(Store(self.store.root))
        return time.perf_counter() - start


def measure(stores: dict[int, Commands], runs: int) -> dict[int, dict[str, dict[str, Any]]]:
    """Each command ``runs`` times on each store, interleaved run by run and store by store
    (so a paired ratio compares runs that shared the machine's noise), after one warm-up."""
    measured = {size: commands.measured() for size, commands in stores.items()}
    for by_name in measured.values():
        for once in by_name.values():
            once()
    samples: dict[int, dict[str, list[float]]] = {
        size: {name: [] for name in by_name} for size, by_name in measured.items()
    }
    for i in range(runs):
        os.sync()
        for name in next(iter(measured.values())):
            for size, by_name in measured.items():
                samples[size][name].append(by_name[name]())
        for size, by_size in samples.items():
            done = ", ".join(f"{n} {s[-1]:.3f}" for n, s in by_size.items())
            log(f"  run {i + 1}/{runs}, {size} refs: {done}")
    return {
        size: {name: stats(values) for name, values in by_size.items()}
        for size, by_size in samples.items()
    }


def benchmark(work: Path, sizes: Sequence[int], runs: int, timeout: float) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "imagekit")],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    upstream = Path(tempfile.mkdtemp(prefix="upstream-", dir=work))
    published = publish(upstream, 1)
    disk = work / "import.raw"
    disk.write_bytes(random.Random(1).randbytes(DISK_BYTES))
    results: dict[str, Any] = {"machine": machine(), "runs": runs, "sizes": {}}
    with mirror(upstream / "pub") as base:
        write_recipe(published, base, published.recipe)
        stores = {}
        for size in sizes:
            store = build_store(work / f"store-{size}", size)
            commands = Commands(store, published.recipe, disk, timeout)
            commands.imagekit("pull", str(published.recipe))  # the one real image: later
            # pulls of it are cache hits
            commands.imagekit("gc")  # what earlier runs left: gc-0 must find nothing
            stores[size] = commands
        log(f"measuring the stores of {', '.join(map(str, sizes))} refs")
        for size, by_name in measure(stores, runs).items():
            store = stores[size].store
            results["sizes"][str(size)] = {
                "refs": len(store.refs()),
                "blobs": sum(1 for _ in store.blobs_dir.iterdir()),
                "figures": by_name,
            }
    shutil.rmtree(upstream)
    results["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return results


def figures(results: dict[str, Any]) -> list[Figure]:
    sizes = sorted(results["sizes"], key=int)
    small, large = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
    out = []
    for name, target in TARGETS.items():
        figure = large["figures"][name]
        base = small["figures"][name]
        out.append(
            Figure(
                f"{name} at {sizes[-1]} refs",
                figure["median_s"],
                f"{name} at {sizes[0]} refs",
                base["median_s"],
                _paired(figure, base),
                f"< {target} s",
                figure["median_s"] < target,
            )
        )
    for name in ("fsck", "import"):
        figure, base = large["figures"][name], small["figures"][name]
        out.append(
            Figure(
                f"{name} at {sizes[-1]} refs",
                figure["median_s"],
                f"{name} at {sizes[0]} refs",
                base["median_s"],
                _paired(figure, base),
                "(growth shown)",
                True,
            )
        )
    gc0, gc0_small = large["figures"]["gc-0"], small["figures"]["gc-0"]
    ratio = _paired(gc0, gc0_small)
    out.append(
        Figure(
            f"gc-0 at {sizes[-1]} refs",
            gc0["median_s"],
            f"gc-0 at {sizes[0]} refs",
            gc0_small["median_s"],
            ratio,
            f"<= {GC_GROWTH}x",
            ratio <= GC_GROWTH,
        )
    )
    gc10 = large["figures"]["gc-10"]
    extra = gc10["median_s"] - gc0["median_s"]
    out.append(
        Figure(
            f"gc-10 at {sizes[-1]} refs",
            gc10["median_s"],
            f"gc-0 at {sizes[-1]} refs",
            gc0["median_s"],
            _paired(gc10, gc0),
            f"<= gc-0 + {GC_PER_REMOVED} s",
            extra <= GC_PER_REMOVED,
        )
    )
    return out


def _paired(figure: dict[str, Any], base: dict[str, Any]) -> float:
    return paired_ratio(figure["runs_s"], base["runs_s"])


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = sorted(results["sizes"], key=int)
    lines = [
        f"imagekit {m['imagekit']}, {m['python']}, {m['nproc']} CPU(s) {m['cpu']}, {m['date']}",
        f"load: {results['uptime']}",
        f"medians of {results['runs']} whole-process runs (tag: in process)",
        "",
        "how each grows: " + "  ".join(f"{s} refs" for s in sizes),
    ]
    names = list(results["sizes"][sizes[0]]["figures"])
    for name in names:
        cells = [f"{results['sizes'][s]['figures'][name]['median_s']:.3f} s" for s in sizes]
        lines.append(f"  {name:<8} " + "  ".join(f"{c:>10}" for c in cells))
    lines.append(
        "  store    "
        + "  ".join(
            f"{results['sizes'][s]['refs']} refs / {results['sizes'][s]['blobs']} blobs"
            for s in sizes
        )
    )
    lines += ["", summary_table(figures(results))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--work", type=Path, help="keep the built stores here for the next run")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="imagekit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = benchmark(work, sizes, args.runs, args.timeout)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0 if all(f.ok for f in figures(results)) else 1


if __name__ == "__main__":
    sys.exit(main())
