"""Benchmark ``imagekit build --all`` over a 10-recipe folder against a virt-builder shell loop.

Everything is made here, offline. The busybox guest tree of ``tests/guestimage.py`` becomes a
qcow2 (one untimed launch) that both tools start from:

- imagekit reads it from a loopback mirror (``tests/httpserver.py``) with a clearsigned
  CHECKSUM, as a nightly job reads upstream. The folder: ``base`` (that download, verified),
  ``web`` (base + a step), four recipes on ``base`` and four on ``web`` (a step each): 10
  recipes, 9 steps, each step one appliance launch.
- virt-builder reads the same disk, xz-compressed, from a local template index
  (``--source file:///.../index``, virt-builder(1) "SOURCES OF TEMPLATES"), one
  ``virt-builder`` per recipe in a shell loop, each with its recipe's whole chain of operations
  (one launch each: 10 launches).

Per run, interleaved (the order alternates): the virt-builder loop; ``imagekit build --all DIR
-j N`` on a fresh store (cold); the same command again (warm). Launches are counted from the
report (imagekit) and one per virt-builder call. Targets: warm < 2 s for all 10; cold faster
than the loop (paired ratio < 1).

Run from the repository: ``.venv/bin/python benchmarks/nightly.py [--runs N] [-j N] [--json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, Figure, log, machine, paired_ratio, run, stats, summary_table, terminate

WARM_TARGET = 2.0  # seconds for all 10 recipes, below
COLD_TARGET = 1.0  # imagekit cold / virt-builder loop, below
ON_BASE = [f"node{i}" for i in range(1, 5)]
ON_WEB = [f"app{i}" for i in range(1, 5)]


def step(name: str) -> list[tuple[str, str]]:
    """A recipe's own operations: the same ones for both tools."""
    return [("hostname", f"{name}.bench.lan"), ("write", f"/etc/motd:built for {name}")]


def chains() -> dict[str, tuple[str | None, list[tuple[str, str]]]]:
    """Recipe -> (the recipe it builds on, its own operations)."""
    found: dict[str, tuple[str | None, list[tuple[str, str]]]] = {
        "base": (None, []),
        "web": ("base", step("web")),
    }
    found.update({name: ("base", step(name)) for name in ON_BASE})
    found.update({name: ("web", step(name)) for name in ON_WEB})
    return found


def whole_chain(name: str) -> list[tuple[str, str]]:
    """Every operation from the base up to ``name``, base first (virt-builder's one call)."""
    base, own = chains()[name]
    return ([] if base is None else whole_chain(base)) + own


def recipe_text(name: str, url: str) -> str:
    base, own = chains()[name]
    head = f'name = "{name}"\nversion = "1"\narch = "x86_64"\n[source]\n'
    if base is None:
        return head + (
            f'kind = "http"\nurl = "{url}disk.qcow2"\nchecksum_url = "{url}CHECKSUM"\n'
            'keys = ["upstream.asc"]\n'
        )
    lines = [head + f'kind = "recipe"\nrecipe = "{base}.toml"\n', "[[customize]]"]
    for key, value in own:
        text = json.dumps(value)
        lines.append(f"{key} = {text}" if key == "hostname" else f"{key} = [{text}]")
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(self, work: Path, jobs: int, timeout: float) -> None:
        self.work = work
        self.jobs = jobs
        self.timeout = timeout
        self.folder = work / "recipes"
        self.templates = work / "templates"
        tmp = work / "tmp"
        tmp.mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IMAGEKIT_", "LIBGUESTFS_")) and not k.lower().endswith("_proxy")
        }
        self.env["TMPDIR"] = str(tmp)
        self.env["LIBGUESTFS_CACHEDIR"] = os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")
        self.cli = [sys.executable, "-m", "imagekit"]
        self.counter = 0

    def setup(self, server: Any) -> dict[str, Any]:
        """The base disk (one launch), the mirror, the recipes, the virt-builder index."""
        sys.path.insert(0, str(REPO))
        from imagekit.guest import appliance
        from imagekit.recipe import ScratchSource
        from imagekit.sources.scratch import make_scratch_disk
        from tests.gpgtools import clearsign, make_key
        from tests.guestimage import SIZE, build_guest_tree

        if not appliance.kvm_probe()[0]:
            self.env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"  # as imagekit falls back
        build_guest_tree(self.work / "tree")
        disk = self.work / "base.qcow2"
        log("setup: making the base disk (one launch, untimed)")
        make_scratch_disk(ScratchSource(size=SIZE, content=self.work / "tree"), disk)
        data = disk.read_bytes()
        (self.work / "gpg").mkdir()
        key = make_key(self.work / "gpg", "bench upstream")
        digest = hashlib.sha256(data).hexdigest()
        checksum = f"# disk.qcow2: {len(data)} bytes\nSHA256 (disk.qcow2) = {digest}\n"
        server.add("/bench/disk.qcow2", data)
        server.add("/bench/CHECKSUM", clearsign(key, checksum.encode()))
        self.folder.mkdir()
        (self.folder / "upstream.asc").write_bytes(key.public_key.read_bytes())
        for name in chains():
            (self.folder / f"{name}.toml").write_text(recipe_text(name, server.url("/bench/")))
        self.templates.mkdir()
        packed = lzma.compress(data, preset=1)
        (self.templates / "bench.xz").write_bytes(packed)
        (self.templates / "index").write_text(
            "[bench]\nname=imagekit benchmark busybox\nosinfo=fedora41\narch=x86_64\n"
            f"file=bench.xz\nchecksum[sha512]={hashlib.sha512(packed).hexdigest()}\n"
            f"format=qcow2\nsize={SIZE}\ncompressed_size={len(packed)}\nrevision=1\n"
        )
        return {"disk_bytes": len(data), "template_xz_bytes": len(packed), "recipes": len(chains())}

    def fresh(self, prefix: str) -> Path:
        self.counter += 1
        return self.work / f"{prefix}-{self.counter}"

    def virt_builder_loop(self) -> dict[str, Any]:
        """``for r in ...; do virt-builder bench --source file://index -o r.qcow2 ...; done``."""
        out = self.fresh("vb")
        out.mkdir()
        lines = ["set -e"]
        for name in chains():
            args = [f"--{k.replace('_', '-')} {json.dumps(v)}" for k, v in whole_chain(name)]
            lines.append(
                f"virt-builder bench --source file://{self.templates}/index --no-check-signature"
                f" --no-cache --format qcow2 -o {out}/{name}.qcow2 --root-password disabled"
                f" --no-sync {' '.join(args)}"
            )
        script = out / "loop.sh"
        script.write_text("\n".join(lines) + "\n")
        # Only the local index: virt-builder also reads repos.d from these, and would ask
        # builder.libguestfs.org (no network here, and not what is measured).
        alone = out / "no-repos"
        alone.mkdir()
        env = {**self.env, "VIRT_BUILDER_DIRS": str(alone), "XDG_CONFIG_HOME": str(alone)}
        done = run(["sh", str(script)], env, self.timeout)
        shutil.rmtree(out)
        return {"seconds": done.seconds, "launches": len(chains())}

    def imagekit(self, store: Path) -> dict[str, Any]:
        command = [*self.cli, "build", "--all", str(self.folder), "--store", str(store)]
        done = run([*command, "-j", str(self.jobs), "--json"], self.env, self.timeout)
        report = json.loads(done.stdout)
        if not report["passed"]:
            raise RuntimeError(f"imagekit build --all failed: {report['counts']}")
        return {"seconds": done.seconds, "launches": report["launches"], "counts": report["counts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-loop", action="store_true", help="skip the virt-builder loop (warm figure only)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)
    sys.path.insert(0, str(REPO))
    from tests.httpserver import LoopbackServer

    work = Path(tempfile.mkdtemp(prefix="imagekit-nightly-bench-"))
    try:
        with LoopbackServer() as server:
            bench = Bench(work, args.jobs, args.timeout)
            setup = bench.setup(server)
            samples: dict[str, list[dict[str, Any]]] = {"loop": [], "cold": [], "warm": []}
            for number in range(args.runs):
                store = bench.fresh("store")
                first = number % 2 == 0
                if first and not args.no_loop:
                    log(f"run {number + 1}: virt-builder loop")
                    samples["loop"].append(bench.virt_builder_loop())
                log(f"run {number + 1}: imagekit build --all, cold then warm")
                samples["cold"].append(bench.imagekit(store))
                samples["warm"].append(bench.imagekit(store))
                if not first and not args.no_loop:
                    log(f"run {number + 1}: virt-builder loop")
                    samples["loop"].append(bench.virt_builder_loop())
                shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.no_loop:
        del samples["loop"]
    seconds = {name: [s["seconds"] for s in runs] for name, runs in samples.items()}
    warm = statistics.median(seconds["warm"])
    figures = []
    if not args.no_loop:
        cold = paired_ratio(seconds["cold"], seconds["loop"])
        figures.append(
            Figure(
                "cold build --all (10 recipes)",
                statistics.median(seconds["cold"]),
                "virt-builder loop",
                statistics.median(seconds["loop"]),
                cold,
                f"< {COLD_TARGET:.2f}x",
                cold < COLD_TARGET,
            )
        )
    figures.append(
        Figure(
            "warm build --all (10 recipes)",
            warm,
            "cold build --all",
            statistics.median(seconds["cold"]),
            paired_ratio(seconds["warm"], seconds["cold"]),
            f"< {WARM_TARGET:.1f} s",
            warm < WARM_TARGET,
        )
    )
    result = {
        "machine": machine(),
        "load": os.getloadavg(),
        "jobs": args.jobs,
        "setup": setup,
        "samples": samples,
        "stats": {name: stats(values) for name, values in seconds.items()},
        "launches": {name: [s["launches"] for s in runs] for name, runs in samples.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, runs in samples.items():
        launches = [s["launches"] for s in runs]
        print(f"{name:>5}: {stats(seconds[name])['median_s']:8.2f} s median, launches {launches}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(summary_table(figures))


if __name__ == "__main__":
    main()
